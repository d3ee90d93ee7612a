"""The multimodal-LM listener (DESIGN 8): context builder, word conditioning, training through the harness,
checkpoints with the IDVQ tokenizer, identity control at generation, the SmolLM2 backbone (slow)."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import realm
from realm.cli import app
from realm.data import load_any
from realm.errors import RealmInputError
from realm.models.mmlm import FRAMES_PER_TOKEN, MMLM, MMLMConfig, build_context
from realm.train.baselines import baseline_train_config, train_baseline

TINY_VQ = {"width": 32, "code_dim": 32, "codes": 16, "depth": 1, "id_width": 16, "id_dim": 16}
TINY = {"vq": TINY_VQ, "ref_frames": 64, "dim": 32, "layers": 1, "heads": 2, "audio_hidden": 16}
TRAIN = dict(extractor="prosody", batch_size=8, epochs=1, max_steps=4, clip_len=32, clip_stride=16, val_stride=32,
             accelerator="cpu", devices="1")  # fmt: skip


# ---------------------------------------------------------------- the context builder


def test_word_precedes_token_exactly_when_it_ends_before_the_tokens_first_frame():
    # token j's first frame is 8 j: a word ending at frame 7 precedes token 1, one ending at 8 does not
    ends = [7, 8, 0, 23, 16]
    got = build_context(4, ends)
    assert got == [("slot", 0), ("word", 2), ("word", 0), ("slot", 1), ("word", 1), ("slot", 2),
                   ("word", 4), ("word", 3), ("slot", 3)]  # fmt: skip
    # a word ending before the window (negative end) comes before slot 0; one at the last token's frame is unheard
    assert build_context(2, [-30, 8]) == [("word", 0), ("slot", 0), ("slot", 1)]
    # a window starting at token 5: slot j predicts token 5 + j, first frame 40 + 8 j (ends stay absolute here)
    assert build_context(2, [39, 40, 47, 48], first_token=5) == [("word", 0), ("slot", 0), ("word", 1), ("word", 2), ("slot", 1)]


def test_generation_places_words_as_training_does_in_later_windows():
    """Generation slides a window of W slots; in a window starting at token j0 > 0 a word must still come
    right before the first token whose first frame is after its end (as in training), not earlier."""
    from realm.data.clip import Word

    torch.manual_seed(0)
    cfg = MMLMConfig(spec="arkit58", audio_dim=4, vocab=["yes"], emotions=["neutral"], dim=16, layers=1, heads=2,
                     audio_hidden=8, window_tokens=4, vq=TINY_VQ)  # fmt: skip
    m = MMLM(cfg).eval()
    end_frame = 163  # inside token 20 (frames 160..167): the word belongs before token 21
    seen = []
    original = m.sequence

    def spy(slots_in, cond, words, ends, first_token=0):
        x, pos, real = original(slots_in, cond, words, ends, first_token)
        if int(real.sum()) > pos.shape[1]:  # the word is in this window
            word_pos = next(p for p in range(int(real.sum())) if p not in pos[0].tolist())
            first_slot_after = next(k for k, p in enumerate(pos[0].tolist()) if p > word_pos)
            seen.append(first_token + first_slot_after)
        return x, pos, real

    m.sequence = spy
    with torch.no_grad():
        m.generate_tokens(torch.zeros(1, 8 * 24, 4), [Word("yes", 5.0, (end_frame + 0.5) / 30)])
    assert seen and set(seen) == {21}, seen  # every window that holds the word puts it before token 21


@pytest.mark.parametrize("hop", [0, 1, 3])
def test_kv_cached_decoding_gives_the_tokens_of_full_decoding(hop):
    """Within a decoding window the LM sequence only grows, so the key/value cache gives the tokens
    that recomputing the whole window for every slot gives, greedy and sampled, across window hops."""
    from realm.data.clip import Word

    torch.manual_seed(0)
    cfg = MMLMConfig(spec="arkit58", audio_dim=4, vocab=["yes", "no", "maybe"], emotions=["neutral"], dim=32, layers=2,
                     heads=2, audio_hidden=8, window_tokens=6, decode_hop=hop, vq=TINY_VQ)  # fmt: skip
    m = MMLM(cfg).eval()
    torch.nn.init.normal_(m.head.weight, std=1.0)  # logits far apart: sampling and argmax are not knife-edge
    audio = torch.randn(1, 8 * 23 + 5, 4)  # 24 tokens, the last one partial: the window hops several times
    words = [Word(w, t, t + 0.3) for w, t in [("yes", 0.2), ("no", 1.0), ("maybe", 1.05), ("yes", 3.1), ("unseen", 4.4)]]
    with torch.no_grad():
        for temperature in (0.0, 1.0):
            m.config.kv_cache = False
            full = m.generate_tokens(audio, words, samples=2, seed=5, temperature=temperature)
            m.config.kv_cache = True
            cached = m.generate_tokens(audio, words, samples=2, seed=5, temperature=temperature)
            assert full.shape == (2, 24) and torch.equal(cached, full)
            alone = m.generate_tokens(audio, words, samples=1, seed=5, temperature=temperature)
            assert torch.equal(alone[0], full[0])  # the samples decode as one batch; each is what it is alone
    starts = [m.window_start(j) for j in range(24)]
    assert starts[:6] == [0] * 6 and all(j - s0 < 6 for j, s0 in enumerate(starts))  # at most a training window
    if hop == 1:
        assert starts[6:9] == [1, 2, 3]  # the sliding window, every slot
    else:
        step = hop or 3
        assert set(np.diff(starts)) <= {0, step} and min(j - s for j, s in enumerate(starts) if j >= 6) == 6 - step


# ---------------------------------------------------------------- blinks as their own channel


def _blinking(T=300, onsets=(30, 95, 181, 250), seed=0):
    """Raw arkit58 motion: a slow eyelid drift plus 150-200 ms synthetic blinks (realm.data.synth's pulses)."""
    from realm.data.synth import BS, pulse
    from realm.motion import get_spec

    rng = np.random.default_rng(seed)
    m = np.zeros((T, 58), np.float32)
    m[:, BS["eyeBlinkLeft"]] = m[:, BS["eyeBlinkRight"]] = 0.1 + 0.05 * np.sin(np.arange(T) / 40)
    m[:, BS["mouthSmileLeft"]] = 0.2 + 0.1 * np.sin(np.arange(T) / 25)
    for f in onsets:
        p = pulse(T, (f - 0.5) / 30, float(rng.uniform(0.15, 0.2)))
        for ch in ("eyeBlinkLeft", "eyeBlinkRight"):
            m[:, BS[ch]] = np.maximum(m[:, BS[ch]], 0.95 * p)
    return m, get_spec("arkit58")


def test_deblinking_removes_the_blinks_and_nothing_else_and_the_channel_puts_them_back():
    from realm.metrics import detect_blinks
    from realm.models.mmlm import blink_classes, blink_spans, deblink
    from realm.motion import NormStats

    raw, spec = _blinking()
    spans = blink_spans(raw, spec, 30.0)
    onsets = [a for a, _ in spans]
    assert len(onsets) == 4 and all(abs(a - f) <= 1 for a, f in zip(onsets, (30, 95, 181, 250), strict=True))
    lids = [spec.channel("eyeBlinkLeft"), spec.channel("eyeBlinkRight")]
    flat = deblink(raw, spans, lids)
    assert detect_blinks(flat, spec) == [] and flat[:, lids].max() < 0.2  # the eyelids keep their slow drift only
    others = [i for i in range(58) if i not in lids]
    assert np.array_equal(flat[:, others], raw[:, others])
    classes = blink_classes(spans, 300 // FRAMES_PER_TOKEN)
    assert [(j, c - 1) for j, c in enumerate(classes) if c] == [(a // 8, a % 8) for a in onsets]
    # the model draws its template at those onsets: the blinks come back where they were
    torch.manual_seed(0)
    m = MMLM(MMLMConfig(spec="arkit58", audio_dim=4, emotions=["neutral"], dim=16, layers=1, heads=2, audio_hidden=8,
                        vq=TINY_VQ)).eval()  # fmt: skip
    assert m.blinks and m.blink_head.out_features == FRAMES_PER_TOKEN + 1
    stats = NormStats.fit([raw], "arkit58")

    class Clip:
        def samples(self):
            return raw[None]

    from realm.models.mmlm import blink_template

    m.blink_template.copy_(torch.from_numpy(blink_template([Clip()], stats, spec, m.config.blink_frames)))
    back = m.add_blinks(torch.from_numpy(stats.apply(flat).astype(np.float32))[None], torch.from_numpy(classes)[None])
    back = stats.invert(back[0].numpy())
    assert [b["frame"] for b in detect_blinks(back, spec)] == onsets
    np.testing.assert_allclose(back[:, others], raw[:, others], atol=1e-5)
    assert MMLMConfig.from_saved({}).blink_channel is False and MMLMConfig.from_dict({}).blink_channel  # older runs: none


def test_restyle_of_a_blink_channel_run_keeps_the_blinks():
    """`realm restyle` with an mmlm run that has the blink channel goes through both of its outputs: the
    tokens of the deblinked motion and the template at the motion's blink onsets (tokens alone lose them)."""
    from types import SimpleNamespace

    from realm.metrics import detect_blinks
    from realm.models.mmlm import blink_template, restyle
    from realm.motion import NormStats

    raw, spec = _blinking()
    stats = NormStats.fit([raw], "arkit58")
    torch.manual_seed(0)
    m = MMLM(MMLMConfig(spec="arkit58", audio_dim=4, emotions=["neutral"], dim=16, layers=1, heads=2, audio_hidden=8,
                        vq=TINY_VQ)).eval()  # fmt: skip
    m.blink_template.copy_(torch.from_numpy(blink_template([SimpleNamespace(samples=lambda: raw[None])], stats, spec,
                                                           m.config.blink_frames)))  # fmt: skip
    run = SimpleNamespace(model=m, spec=spec, stats=stats, path="run")
    onsets = [b["frame"] for b in detect_blinks(raw, spec)]
    assert [b["frame"] for b in detect_blinks(restyle(run, raw, raw), spec)] == onsets
    m.blinks = False  # the tokens alone: an untrained tokenizer, no blink
    assert detect_blinks(restyle(run, raw, raw), spec) == []


# ---------------------------------------------------------------- words reach the prediction


def test_tiny_lm_learns_a_word_triggered_token():
    """Token j is 1 when the word "yes" ended before token j's first frame (in the window), else 0:
    only the word context can tell; the tiny backbone must learn it."""
    torch.manual_seed(0)
    cfg = MMLMConfig(spec="arkit58", audio_dim=4, vocab=["yes", "no"], emotions=["neutral"], dim=32, layers=2, heads=2,
                     audio_hidden=8, dropout=0.0, vq=TINY_VQ)  # fmt: skip
    m = MMLM(cfg)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    n, B = 6, 16

    def batch():
        ends = torch.randint(0, FRAMES_PER_TOKEN * n, (B,), generator=g)
        which = torch.randint(0, 2, (B,), generator=g)  # 1 = "yes", 2 = "no"
        words = [[[int(w)]] for w in which + 1]
        tgt = ((ends[:, None] < FRAMES_PER_TOKEN * torch.arange(n)) & (which[:, None] == 0)).long()
        return words, [[int(e)] for e in ends], tgt

    audio = torch.zeros(B, n * FRAMES_PER_TOKEN, 4)
    slots = torch.full((B, n), m.start)
    for _ in range(150):
        words, ends, tgt = batch()
        x, pos, real = m.sequence(slots, m.slot_features(audio, n), words, ends)
        loss = torch.nn.functional.cross_entropy(m.logits(x, real, pos).reshape(-1, 16), tgt.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    words, ends, tgt = batch()
    with torch.no_grad():
        x, pos, real = m.sequence(slots, m.slot_features(audio, n), words, ends)
        acc = (m.logits(x, real, pos).argmax(-1) == tgt).float().mean()
    assert acc > 0.95, float(acc)


# ---------------------------------------------------------------- training, checkpoints, generation


@pytest.fixture(scope="module")
def ds(tiny_synth):
    return tiny_synth


@pytest.fixture(scope="module")
def runs(ds, tmp_path_factory):
    root = tmp_path_factory.mktemp("mmruns")
    train_baseline("idvq", baseline_train_config("idvq", data=str(ds), **TRAIN), root / "idvq",
                   model_cfg={"vq": TINY_VQ, "ref_frames": 64}, progress=False)  # fmt: skip
    train_baseline("mmlm", baseline_train_config("mmlm", data=str(ds), **TRAIN), root / "mmlm", model_cfg=TINY, progress=False)
    return root


def test_mmlm_run_directory_and_generation(runs, ds):
    cfg = json.loads((runs / "mmlm" / "config.json").read_text())
    assert cfg["model_type"] == "mmlm" and cfg["model"]["backbone"] == "tiny" and cfg["selected_on"] == "val"
    assert cfg["model"]["emotions"] and cfg["model"]["vocab"]
    listener = realm.load(runs / "mmlm")
    clip = load_any(ds, splits="test")[0]
    greedy = listener.generate(clip.audio_path, words=clip.words, samples=2)
    lids = [listener.spec.channel(c) for c in ("eyeBlinkLeft", "eyeBlinkRight")]
    others = [i for i in range(58) if i not in lids]
    assert greedy.shape == (2, clip.n_frames, 58) and np.allclose(greedy[0][:, others], greedy[1][:, others])
    assert not np.allclose(greedy[0][:, lids], greedy[1][:, lids])  # greedy tokens; blinks are always drawn
    assert listener.stochastic
    hot = listener.generate(clip.audio_path, words=clip.words, samples=2, temperature=1.5, top_p=1.0, seed=3)
    assert not np.allclose(hot[0], hot[1])
    again = listener.generate(clip.audio_path, words=clip.words, samples=2, temperature=1.5, top_p=1.0, seed=3)
    np.testing.assert_array_equal(hot, again)  # seeded


def test_identity_ref_changes_the_style_not_the_tokens(runs, ds):
    listener = realm.load(runs / "mmlm")
    clip = load_any(ds, splits="test")[0]
    train = load_any(ds, splits="train")
    a = listener.generate(clip.audio_path, words=clip.words, identity_ref=train[0].listener)
    b = listener.generate(clip.audio_path, words=clip.words, identity_ref=train[-1].listener)
    assert a.shape == b.shape and not np.allclose(a, b)
    with pytest.raises(RealmInputError, match="identity_ref"):
        listener.generate(clip.audio_path, identity_ref=np.zeros((80, 12), np.float32))
    with pytest.raises(ValueError, match="60 frames"):
        listener.generate(clip.audio_path, identity_ref=train[0].listener[:30])
    with pytest.raises(ValueError, match="idvq does not take temperature"):
        realm.load(runs / "idvq").generate(clip.audio_path, temperature=0.0)  # options a model lacks are an error


def test_mmlm_on_a_trained_tokenizer_keeps_it_frozen(runs, ds, tmp_path):
    from safetensors.torch import load_file

    from realm.models.mmlm import _read_vq_config

    train_baseline("mmlm", baseline_train_config("mmlm", data=str(ds), **TRAIN), tmp_path / "m2",
                   model_cfg={**TINY, "vq_run": str(runs / "idvq")}, progress=False)  # fmt: skip
    vq = {k: v for k, v in load_file(str(runs / "idvq" / "model.safetensors")).items() if k.startswith("vq.")}
    mm = load_file(str(tmp_path / "m2" / "model.safetensors"))
    for k, v in vq.items():
        torch.testing.assert_close(mm[k], v)  # the LM trained on exactly the tokenizer it was given
    # another LM on an mmlm run's tokenizer (e.g. SmolLM2 against a tiny backbone, the same tokens)
    train_baseline("mmlm", baseline_train_config("mmlm", data=str(ds), **TRAIN), tmp_path / "m3",
                   model_cfg={**TINY, "vq_run": str(runs / "mmlm")}, progress=False)  # fmt: skip
    first = load_file(str(runs / "mmlm" / "model.safetensors"))
    third = load_file(str(tmp_path / "m3" / "model.safetensors"))
    assert all(torch.equal(third[k], v) for k, v in first.items() if k.startswith("vq."))
    (tmp_path / "notvq").mkdir()
    (tmp_path / "notvq" / "config.json").write_text(json.dumps({"model_type": "lstm"}))
    with pytest.raises(RealmInputError, match="vq_run must be a `realm train idvq` or `realm train mmlm` run"):
        _read_vq_config(tmp_path / "notvq")


def test_cli_train_generate_restyle(runs, ds, tmp_path):
    r = CliRunner()
    clip = load_any(ds, splits="test")[0]
    words = tmp_path / "words.json"
    words.write_text(json.dumps([w.to_dict() for w in clip.words]))
    ref = tmp_path / "ref.npy"
    np.save(ref, load_any(ds, splits="train")[1].listener)
    out = tmp_path / "g.npz"
    res = r.invoke(app, ["generate", "-c", str(runs / "mmlm"), "-a", str(clip.audio_path), "--transcript", str(words),
                         "--identity-ref", str(ref), "--greedy", "-o", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert np.load(out)["listener"].shape == (1, clip.n_frames, 58)
    res = r.invoke(app, ["restyle", "-c", str(runs / "idvq"), "-m", str(out), "--identity-ref", str(ref), "-o", str(tmp_path / "r.npz")])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "r.npz")["listener"].shape == (1, clip.n_frames, 58)
    res = r.invoke(app, ["generate", "-c", str(runs / "idvq"), "-a", str(clip.audio_path), "-o", str(tmp_path / "x.npz")])
    assert res.exit_code == 2 and "not a listener" in res.output
    res = r.invoke(app, ["train", "mmlm", "--data", str(ds), "--out", str(tmp_path / "cli"), "--vq", str(runs / "idvq"),
                         "--max-steps", "2", "--clip-len", "32", "--batch-size", "8", "--accelerator", "cpu", "--devices", "1",
                         "--set", "dim=32", "--set", "layers=1", "--set", "heads=2", "--set", "ref_frames=64"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["model"]["vq_run"] == str((runs / "idvq").resolve())


@pytest.mark.slow
def test_smollm2_backbone_loads_offline_and_trains_one_step(ds, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = baseline_train_config("mmlm", data=str(ds), **{**TRAIN, "max_steps": 1, "batch_size": 2})
    res = train_baseline("mmlm", cfg, tmp_path / "smol", model_cfg={**TINY, "backbone": "smollm2", "vq_fraction": 0.0},
                         progress=False)  # fmt: skip
    assert res["train"]["steps"] == 1
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "smol" / "model.safetensors")).keys()
    assert any("lora" in k for k in keys) and not any(k.endswith("embed_tokens.weight") for k in keys)
    listener = realm.load(tmp_path / "smol")  # the frozen base weights come back from the package
    clip = load_any(ds, splits="test")[0]
    assert listener.generate(clip.audio_path, words=clip.words[:3]).shape == (1, clip.n_frames, 58)


def test_the_streaming_mmlm_gives_the_offline_frames_of_windowed_decoding(runs, ds, tmp_path):
    """Audio pushed in chunks and words as they end give what offline generation gives with the
    streamer's windowed token decoding (decode_window): the same tokens, blinks and frames."""
    import shutil

    from realm.audio import load_audio

    run = tmp_path / "mm"
    shutil.copytree(runs / "mmlm", run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["decode_window"] = 4  # the fixture's windows are 4 tokens (32 frames)
    (run / "config.json").write_text(json.dumps(cfg))
    listener = realm.load(run)
    assert listener.streams and listener.model.blinks
    clip = load_any(ds, splits="test")[0]
    y = load_audio(clip.audio_path)
    offline = listener.generate(y, words=clip.words, seed=4, temperature=1.0)[0]
    s = listener.streamer(seed=4, temperature=1.0)
    assert abs(s.latency_s - (8 * 3 / 30 + s.ex.ahead / 16000)) < 1e-9
    out, given = [], 0
    for a in range(0, len(y), 3000):
        heard = [w for w in clip.words[given:] if w.end * 16000 <= a + 3000]  # each word once its audio is in
        given += len(heard)
        out.append(s.push(y[a : a + 3000], words=heard))
        assert len(out[-1]) % 8 == 0
    out.append(s.flush())
    streamed = np.concatenate(out)
    assert streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, atol=1e-5)
    # a second sample of the same seed: the offline run's sample 1
    two = listener.generate(y, words=clip.words, seed=4, temperature=1.0, samples=2)[1]
    s1 = listener.streamer(seed=4, sample=1, temperature=1.0)
    np.testing.assert_allclose(np.concatenate([s1.push(y, words=clip.words), s1.flush()]), two, atol=1e-5)


def test_realm_serve_streams_the_mmlm_with_words_sent_as_they_are_heard(runs, ds):
    """`realm serve` runs the mmlm's streamer: words arrive as control messages and count from the
    next model call; the frames are the streamer's for the same audio and words, bit for bit."""
    import asyncio

    pytest.importorskip("websockets")
    from websockets.asyncio.client import connect

    from realm.audio import load_audio
    from realm.serve import ListenerServer, ServerConfig, encode_pcm16, quantise_pcm16

    listener = realm.load(runs / "mmlm")
    clip = load_any(ds, splits="test")[0]
    q = quantise_pcm16(load_audio(clip.audio_path)[: 16000 * 3])
    words = [w for w in clip.words if w.end < 3.0]
    assert words

    async def scenario():
        server = await ListenerServer(listener, config=ServerConfig(port=0)).start()
        try:
            async with connect(server.url) as ws:
                await ws.send(json.dumps({"type": "start", "seed": 2}))
                ready = json.loads(await ws.recv())
                assert ready["type"] == "ready" and ready["window"] == 8
                codes = []
                for bad in ({"type": "words", "words": "great"}, {"type": "words", "words": [{"word": "a", "start": 2, "end": 1}]}):
                    await ws.send(json.dumps(bad))
                    while (m := json.loads(await ws.recv()))["type"] != "error":
                        pass
                    codes.append(m["code"])
                await ws.send(json.dumps({"type": "words", "words": [w.to_dict() for w in words]}))
                for k in range(0, len(q), 1600):
                    await ws.send(encode_pcm16(q[k : k + 1600]))
                await ws.send(json.dumps({"type": "stop"}))
                frames = []
                while (m := json.loads(await ws.recv()))["type"] != "end":
                    if m["type"] == "frame":
                        frames.append(m["motion"])
                return codes, np.array(frames, np.float32)
        finally:
            await server.close()

    codes, frames = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert codes == ["bad_words", "bad_words"]
    n = torch.get_num_threads()
    torch.set_num_threads(ServerConfig().torch_threads)  # as a server worker: the same sums, the same bits
    try:
        st = listener.streamer(seed=2)
        st.add_words([type(w)(w.word, round(w.start, 4), round(w.end, 4)) for w in words])  # as sent (to_dict rounds)
        expected = np.concatenate([st.push(q[k : k + 1600]) for k in range(0, len(q), 1600)] + [st.flush()])
    finally:
        torch.set_num_threads(n)
    assert frames.shape == expected.shape == (90, 58)
    np.testing.assert_array_equal(frames, expected)
