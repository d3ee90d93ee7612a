"""REALM's architecture: shifted ALiBi, parameter counts, blocks from the spec, refinement, ablations."""

import math

import pytest
import torch

from realm.models.alibi import alibi_slopes, shifted_alibi_bias
from realm.models.realm import REALM, REALMConfig


def test_shifted_alibi_matches_the_formula_on_16x16():
    tau, H = 8, 4
    bias = shifted_alibi_bias(16, 16, H, tau)
    assert bias.shape == (H, 16, 16)
    assert alibi_slopes(4).tolist() == [0.5, 0.25, 0.125, 0.0625]
    for h in range(H):
        m = 2.0 ** -(h + 1)
        for i in range(16):
            for j in range(16):
                expected = -math.inf if j > i else -m * abs((i - j) - tau)
                assert bias[h, i, j].item() == expected
    # peaks at j = i - tau wherever that key exists; future keys masked
    for i in range(tau, 16):
        assert bias[0, i].argmax().item() == i - tau
    assert torch.isinf(bias[:, 3, 4:]).all() and not torch.isinf(bias[:, 3, :4]).any()
    plain = shifted_alibi_bias(16, 16, H, tau=0)  # standard one-sided ALiBi
    assert plain[1, 10, 10] == 0 and plain[1, 10, 7] == -0.25 * 3


def test_parameter_counts_match_the_paper():
    counts = REALM(REALMConfig(spec="vico70", audio_dim=768)).param_counts()
    assert counts["coarse"] == pytest.approx(2.29e6, rel=0.02)
    assert counts["total"] == pytest.approx(2.86e6, rel=0.02)
    assert counts["audio_encoder"] == pytest.approx(0.69e6, rel=0.02)
    assert counts["refinement"] == pytest.approx(0.57e6, rel=0.02)
    no_ref = REALM(REALMConfig(spec="vico70", audio_dim=768, use_refinement=False)).param_counts()
    assert no_ref["total"] == counts["coarse"]


@pytest.mark.parametrize("spec,dim", [("vico70", 70), ("flame56", 56), ("arkit58", 58), ("vico73", 73)])
def test_runs_on_every_spec_and_keeps_frame_zero(spec, dim):
    torch.manual_seed(0)
    m = REALM(REALMConfig(spec=spec, audio_dim=20, d_model=32, ff_dim=64)).eval()
    audio, f0 = torch.randn(2, 37, 20), torch.randn(2, dim)
    with torch.no_grad():
        out, aux = m(audio, f0)
    assert out.shape == (2, 37, dim) and aux["alpha"].shape == (2, 37, 1)
    assert torch.equal(out[:, 0], f0)
    assert set(m.decoder.heads) == set(m.spec.block_names)
    hist = torch.randn(2, 5, dim)  # a real (short) history replaces the bootstrap
    with torch.no_grad():
        out2, aux2 = m(audio, history=hist)
    assert out2.shape == (2, 37, dim) and aux2["waypoint"] is None


def test_refinement_starts_as_identity_and_follows_its_noise_seed():
    torch.manual_seed(0)
    m = REALM(REALMConfig(spec="arkit58", audio_dim=16, d_model=32, ff_dim=64)).eval()
    motion, audio = torch.randn(1, 40, 58), torch.randn(1, 40, 16)
    with torch.no_grad():
        assert torch.equal(m.refine(motion, audio), motion)  # zero-initialised residual
        torch.nn.init.normal_(m.refinement.out.weight, std=0.05)
        noise = lambda s: torch.randn(1, 128, 40, generator=torch.Generator().manual_seed(s))  # noqa: E731
        a, b, c = m.refine(motion, audio, noise(1)), m.refine(motion, audio, noise(1)), m.refine(motion, audio, noise(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    pose = m.spec.indices("pose")
    assert torch.equal(a[..., pose], motion[..., pose])  # pose is never refined


def test_ablation_flags():
    torch.manual_seed(0)
    audio, f0 = torch.randn(1, 32, 16), torch.randn(1, 58)
    kw = dict(spec="arkit58", audio_dim=16, d_model=32, ff_dim=64)
    deaf = REALM(REALMConfig(use_audio=False, **kw)).eval()
    with torch.no_grad():  # a deaf model's output does not depend on the audio
        assert torch.equal(deaf(audio, f0, refine=False)[0], deaf(audio * 3 + 1, f0, refine=False)[0])
        nogate = REALM(REALMConfig(use_gate=False, **kw)).eval()
        assert torch.all(nogate(audio, f0)[1]["alpha"] == 1)
    assert REALM(REALMConfig(tau=0, **kw)).fusion.bias[0, 5].argmax().item() == 5
    assert REALM(REALMConfig(use_refinement=False, **kw)).refinement is None


def test_audio_context_lets_a_window_hear_the_audio_before_it():
    torch.manual_seed(0)
    audio = torch.randn(1, 48, 16)
    changed = audio.clone()
    changed[:, 8:16] += 1.0  # inside window 0
    for C, expect_change in ((0, False), (16, True)):
        m = REALM(REALMConfig(spec="arkit58", audio_dim=16, d_model=32, ff_dim=64, audio_context=C)).eval()
        with torch.no_grad():
            a, b = m.encode_audio(audio), m.encode_audio(changed)
        assert not torch.allclose(a[:, 0], b[:, 0])
        assert (not torch.allclose(a[:, 1], b[:, 1])) == expect_change  # window 1 hears window 0 only with context
        assert torch.allclose(a[:, 2], b[:, 2])  # 16 frames of context reach one window back, no further
    assert REALM(REALMConfig(audio_context=16)).param_counts() == REALM(REALMConfig()).param_counts()


def test_a_fresh_model_holds_its_start_frame():
    """Zero-initialised delta heads: before training, every window repeats the last history frame."""
    torch.manual_seed(0)
    m = REALM(REALMConfig(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64)).eval()
    hist = torch.randn(1, 16, 58)
    with torch.no_grad():
        out, _ = m(torch.randn(1, 40, 20), history=hist)
    assert torch.allclose(out, hist[:, -1:].expand(-1, 40, -1))
    assert REALM(REALMConfig(spec="arkit58", zero_init_heads=False)).decoder.heads["expression"].weight.abs().sum() > 0


def test_identity_anchor_adds_one_memory_token_read_for_the_whole_rollout():
    torch.manual_seed(0)
    cfg = dict(spec="arkit58", audio_dim=80, d_model=32, ff_dim=64, zero_init_heads=False)
    plain, anchored = REALM(REALMConfig(**cfg)).eval(), REALM(REALMConfig(**cfg, identity_anchor=True)).eval()
    assert sum(p.numel() for p in anchored.parameters()) - sum(p.numel() for p in plain.parameters()) == 32
    audio, hist = torch.randn(2, 16, 80), torch.randn(2, 16, 58)
    a, b = torch.randn(2, 58), torch.randn(2, 58)
    with torch.no_grad():
        with pytest.raises(ValueError, match="anchor"):
            anchored.step(audio, hist)
        ya, _ = anchored.step(audio, hist, anchor=a)
        yb, _ = anchored.step(audio, hist, anchor=b)
        assert not torch.allclose(ya, yb)  # same history, another anchor: another window
        # a rollout keeps the start frame as the anchor: the last window still depends on it
        frame0 = torch.randn(2, 58)
        long = torch.randn(2, 160, 80)
        y1, _ = anchored.rollout(long, frame0=frame0)
        anchored_step = anchored.step
        seen = []
        anchored.step = lambda *args: seen.append(args[3]) or anchored_step(*args)
        anchored.rollout(long, frame0=frame0)
    assert len(seen) == 10 and all(torch.equal(s, frame0) for s in seen)
    assert y1.shape == (2, 160, 58)
