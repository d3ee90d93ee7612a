"""The face renderer, side-by-side videos (MP4 with audio, GIF), plots and `realm render`."""

import json
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from typer.testing import CliRunner

from realm.audio import SAMPLE_RATE
from realm.cli import app
from realm.errors import RealmInputError
from realm.models.realm import REALM, REALMConfig
from realm.motion import get_spec
from realm.render.face import CH, PITCH, YAW, FaceRenderer, face_shapes, face_to_pixels
from realm.render.plots import block_channels, plot_attention, plot_gate, plot_trajectories, realm_internals
from realm.render.video import Compositor, Track, load_track, load_words, render_video

W, H = 200, 240
FPS = 30


def frame(**kw) -> np.ndarray:
    f = np.zeros(58, np.float32)
    for k, v in kw.items():
        f[CH[k] if k in CH else {"pitch": PITCH, "yaw": YAW}[k]] = v
    return f


SMILE = frame(mouthSmileLeft=1.0, mouthSmileRight=1.0)
BLINK = frame(eyeBlinkLeft=1.0, eyeBlinkRight=1.0)


def region(img: np.ndarray, fy: float, half_h: float, half_w: float) -> np.ndarray:
    """Pixels around face-plane height ``fy`` (face units), centred horizontally."""
    cx, cy, s = face_to_pixels((0, 0, img.shape[1], img.shape[0]))
    y0, y1 = int(cy - s * (fy + half_h)), int(cy - s * (fy - half_h))
    x0, x1 = int(cx - s * half_w), int(cx + s * half_w)
    return img[y0:y1, x0:x1].astype(int)


def changed(a: np.ndarray, b: np.ndarray) -> int:
    return int((np.abs(a - b).sum(-1) > 30).sum())


@pytest.fixture(scope="module")
def faces():
    r = FaceRenderer(W, H)
    return {name: r.render(f) for name, f in
            {"neutral": frame(), "smile": SMILE, "blink": BLINK, "nod": frame(pitch=0.12), "turn": frame(yaw=0.4)}.items()}  # fmt: skip


def test_a_smile_changes_the_mouth_and_not_the_eyes(faces):
    n, s = faces["neutral"], faces["smile"]
    assert changed(region(n, -0.47, 0.2, 0.45), region(s, -0.47, 0.2, 0.45)) > 40
    assert changed(region(n, 0.16, 0.1, 0.5), region(s, 0.16, 0.1, 0.5)) == 0


def test_a_blink_closes_the_eyes_and_leaves_the_mouth(faces):
    n, b = faces["neutral"], faces["blink"]
    eyes_n, eyes_b = region(n, 0.16, 0.1, 0.5), region(b, 0.16, 0.1, 0.5)
    assert changed(eyes_n, eyes_b) > 40
    white = lambda im: int((im.min(-1) > 245).sum())  # noqa: E731 - eye whites
    assert white(eyes_n) > 20 and white(eyes_b) == 0
    assert changed(region(n, -0.47, 0.2, 0.45), region(b, -0.47, 0.2, 0.45)) == 0


def _lip_row(img: np.ndarray) -> float:
    lips = (np.abs(img.astype(int) - (196, 92, 96)).sum(-1) < 40)
    return float(np.nonzero(lips)[0].mean())


def _lip_col(img: np.ndarray) -> float:
    lips = (np.abs(img.astype(int) - (196, 92, 96)).sum(-1) < 40)
    return float(np.nonzero(lips)[1].mean())


def test_a_nod_moves_the_face_down_and_a_turn_moves_it_sideways(faces):
    _, _, s = face_to_pixels((0, 0, W, H))
    assert _lip_row(faces["nod"]) - _lip_row(faces["neutral"]) > 0.08 * s  # pitch > 0: the head tips down
    assert abs(_lip_col(faces["turn"]) - _lip_col(faces["neutral"])) > 0.15 * s


def test_face_geometry_checks_its_input_and_hides_nothing_at_rest():
    shapes = face_shapes(frame())
    assert len(shapes) > 20 and all(np.isfinite(sh.points).all() for sh in shapes)
    with pytest.raises(ValueError, match="58"):
        face_shapes(np.zeros(70))


# ---------------------------------------------------------------- videos


def smile_track(T: int = 2 * FPS) -> np.ndarray:
    """Neutral for the first second, smiling for the second."""
    m = np.zeros((T, 58), np.float32)
    m[T // 2 :] = SMILE
    return m


@pytest.fixture()
def speech(tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    y = (0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 2 * t) > 0) + 0.01 * rng.standard_normal(len(t)))
    path = tmp_path / "speech.wav"
    sf.write(path, y.astype(np.float32), SAMPLE_RATE)
    return path


WORDS = [{"word": "hello", "start": 0.1, "end": 0.5}, {"word": "there", "start": 0.6, "end": 1.1}]


def probe(path) -> str:
    """ffmpeg's description of a media file (stream lines), as ffprobe would give."""
    r = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    return r.stderr


def decode(path) -> list[np.ndarray]:
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    return [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen]


def test_mp4_has_the_right_length_audio_and_frames_that_follow_the_motion(tmp_path, speech):
    out = tmp_path / "clip.mp4"
    res = render_video(out, [Track("gen", smile_track(), "arkit58")], audio=speech, words=WORDS, gif=tmp_path / "clip.gif")
    assert res.n_frames == 60 and res.size == (2 * 320, 384)
    n, secs = imageio_ffmpeg.count_frames_and_secs(str(out))
    assert n == 60 and secs == pytest.approx(2.0, abs=0.05)
    info = probe(out)
    assert "Video: h264" in info and "yuv420p" in info and "Audio: aac" in info
    frames = decode(out)
    face = lambda f: f[40:, 320:].astype(int)  # noqa: E731 - the listener panel
    assert changed(face(frames[10]), face(frames[20])) < 50  # both neutral: only compression noise
    assert changed(face(frames[10]), face(frames[50])) > 150  # neutral vs smile
    speaker = lambda f: f[40:130, :320].astype(int)  # noqa: E731 - the waveform and its cursor
    assert changed(speaker(frames[10]), speaker(frames[40])) > 20
    gif = Image.open(tmp_path / "clip.gif")
    assert gif.n_frames == 30  # 15 fps
    total = 0
    for k in range(gif.n_frames):
        gif.seek(k)
        total += gif.info["duration"]
    assert total == pytest.approx(2000, abs=20)


def test_render_refuses_to_overwrite_and_checks_its_arguments(tmp_path, speech):
    out = tmp_path / "clip.mp4"
    out.write_text("mine")
    track = Track("gen", smile_track(), "arkit58")
    with pytest.raises(FileExistsError):
        render_video(out, [track], audio=speech)
    assert out.read_text() == "mine"
    with pytest.raises(ValueError, match="mp4 or .gif"):
        render_video(tmp_path / "clip.avi", [track])
    with pytest.raises(ValueError, match="outside the clip"):
        render_video(tmp_path / "x.mp4", [track], start=5.0)
    render_video(tmp_path / "short.gif", [track], start=0.5, duration=0.5)  # GIF only, a segment
    assert Image.open(tmp_path / "short.gif").n_frames == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "short.gif", "speech.wav"]  # no temp files


def test_other_specs_get_a_pose_face_and_a_moving_expression_strip():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(90, 70)).astype(np.float32) * 0.1
    comp = Compositor([Track("vico", m, "vico70")], None, [], 0.0, 3.0)
    a, b = comp.frame(0).astype(int), comp.frame(45).astype(int)
    strip = slice(int(384 * 0.62) + 2, 384 - 12)
    assert changed(a[strip], b[strip]) > 500


def test_tracks_and_words_load_from_files(tmp_path):
    m = np.stack([smile_track(), np.zeros((60, 58), np.float32)])
    np.savez(tmp_path / "gen.npz", listener=m, spec=np.array("arkit58"), fps=np.array(25.0))
    tr = load_track("gen", tmp_path / "gen.npz", sample=1)
    assert tr.spec.name == "arkit58" and tr.fps == 25.0 and np.all(tr.motion == 0)
    np.save(tmp_path / "raw.npy", np.zeros((10, 56), np.float32))
    assert load_track("raw", tmp_path / "raw.npy").spec.name == "flame56"  # from the width
    np.save(tmp_path / "odd.npy", np.zeros((10, 11), np.float32))
    with pytest.raises(RealmInputError, match="cannot tell the motion spec"):
        load_track("odd", tmp_path / "odd.npy")
    with pytest.raises(RealmInputError, match="not found"):
        load_track("gone", tmp_path / "gone.npz")
    (tmp_path / "w.json").write_text(json.dumps(WORDS[::-1]))
    assert [w.word for w in load_words(tmp_path / "w.json")] == ["hello", "there"]
    (tmp_path / "bad.json").write_text(json.dumps([{"word": "x"}]))
    with pytest.raises(RealmInputError, match="word 0"):
        load_words(tmp_path / "bad.json")


# ---------------------------------------------------------------- plots and REALM internals


def tiny_realm() -> REALM:
    torch.manual_seed(0)
    cfg = REALMConfig(spec="arkit58", audio_dim=8, d_model=16, n_heads=2, ff_dim=32, encoder_layers=1, decoder_layers=1,
                      zero_init_heads=False)  # fmt: skip
    return REALM(cfg).eval()


def test_recording_internals_changes_nothing_and_returns_gate_and_attention():
    model = tiny_realm()
    a = torch.randn(1, 40, 8, generator=torch.Generator().manual_seed(1))
    f0 = torch.zeros(1, 58)
    with torch.inference_mode():
        m1, aux1 = model.rollout(a, frame0=f0)
        with model.record_internals() as rec:
            m2, aux2 = model.rollout(a, frame0=f0)
        m3, _ = model.rollout(a, frame0=f0)
    assert torch.equal(m1, m2) and torch.equal(m1, m3)
    assert len(rec["alpha"]) == len(rec["attention"]) == 3  # ceil(40 / 16) windows
    att = rec["attention"][0]
    assert att.shape == (1, 2, 16, 16)
    torch.testing.assert_close(att.sum(-1), torch.ones(1, 2, 16))
    assert torch.all(att[..., 0, 1:] == 0)  # causal: query 0 sees speaker frame 0 only
    torch.testing.assert_close(torch.cat(rec["alpha"], 1)[:, :40], aux1["alpha"])
    assert not model.fusion.layer.multihead_attn._forward_pre_hooks  # hooks removed


class _FakeListener:
    """What realm_internals needs of a loaded Listener: model, features, _start, fps."""

    def __init__(self, model):
        self.model, self.fps = model, 30.0

    def features(self, audio):
        return np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)

    def _start(self, first_frame, history):
        return torch.zeros(1, 58), None


def test_plots_of_trajectories_gate_and_attention(tmp_path):
    inside = realm_internals(_FakeListener(tiny_realm()), audio=None)
    assert inside.alpha.shape == (50,) and inside.attention.shape == (4, 2, 16, 16)
    assert np.all((inside.alpha > 0) & (inside.alpha < 1))
    gt = smile_track()
    pred = gt + 0.05
    paths = [
        plot_trajectories(tmp_path / "traj.png", {"model": pred}, "arkit58", gt=gt, words=load_words(WORDS)),
        plot_gate(tmp_path / "gate.png", inside.alpha, words=WORDS, window=16),
        plot_attention(tmp_path / "attn.png", inside.attention[1], tau=8, window=1),
    ]
    for p in paths:
        im = Image.open(p)
        assert im.format == "PNG" and im.width > 300
    with pytest.raises(FileExistsError):
        plot_gate(tmp_path / "gate.png", inside.alpha)
    chans = block_channels(get_spec("arkit58"), [gt])
    assert ("expression", "mouthSmileLeft", CH["mouthSmileLeft"]) in chans
    assert [c[1] for c in chans if c[0] == "rotation"] == ["headPitch", "headYaw", "headRoll"]


# ---------------------------------------------------------------- the command


def test_realm_render_command(tmp_path, speech):
    np.savez(tmp_path / "gen.npz", listener=smile_track()[None], spec=np.array("arkit58"), fps=np.array(30.0))
    (tmp_path / "words.json").write_text(json.dumps(WORDS))
    out = tmp_path / "clip.mp4"
    args = ["render", "--motion", f"gen={tmp_path / 'gen.npz'}", "--audio", str(speech), "--words",
            str(tmp_path / "words.json"), "--out", str(out), "--duration", "1", "--gif"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "30 frames" in r.output and out.exists() and out.with_suffix(".gif").exists()
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "exists (use --force" in r.output
    r = CliRunner().invoke(app, ["render", "--motion", "gen=missing.npz", "--out", str(tmp_path / "x.mp4")])
    assert r.exit_code == 2 and "missing.npz: motion file not found" in r.output


def test_realm_render_from_a_dataset_clip(tmp_path, speech):
    from realm.data.clip import Clip, Word, write_clip, write_index

    root = tmp_path / "ds"
    (root / "audio").mkdir(parents=True)
    y, _ = sf.read(speech)
    sf.write(root / "audio" / "c0.wav", y, SAMPLE_RATE)
    clip = Clip("c0", "test", smile_track(), "arkit58", audio_path=root / "audio" / "c0.wav",
                words=[Word(**w) for w in WORDS])  # fmt: skip
    write_index(root, [write_clip(root, clip)], meta={"spec": "arkit58", "fps": 30.0})
    np.save(tmp_path / "gen.npy", np.zeros((60, 58), np.float32))
    out = tmp_path / "clip.mp4"
    r = CliRunner().invoke(app, ["render", "--data", str(root), "--clip", "c0", "--motion", f"realm={tmp_path / 'gen.npy'}",
                                 "--out", str(out), "--start", "0.5", "--duration", "1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    n, _ = imageio_ffmpeg.count_frames_and_secs(str(out))
    assert n == 30 and "Audio: aac" in probe(out)
    assert decode(out)[0].shape == (384, 3 * 320, 3)  # speaker, ground truth, realm
    r = CliRunner().invoke(app, ["render", "--data", str(root), "--clip", "nope", "--out", str(tmp_path / "y.mp4")])
    assert r.exit_code == 2 and "no clip 'nope'" in r.output
