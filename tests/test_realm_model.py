"""REALM's architecture: shifted ALiBi, parameter counts, blocks from the spec, refinement, ablations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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
        noise = lambda s: torch.randn(1, m.refinement.noise_dim, 40, generator=torch.Generator().manual_seed(s))  # noqa: E731
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


def _busy_refinement(**kw) -> REALM:
    """A small REALM whose refinement is not the identity (random residual output)."""
    torch.manual_seed(0)
    m = REALM(REALMConfig(spec="arkit58", audio_dim=16, d_model=32, ff_dim=64, refine_dim=32, refine_ff=64, **kw)).eval()
    torch.nn.init.normal_(m.refinement.out.weight, std=0.1)
    return m


@pytest.mark.parametrize("refine_context", [8, 32])
def test_refining_only_the_last_frames_gives_what_the_whole_sequence_gives(refine_context):
    """``keep`` (a streamer's: the frames before are context) computes the attention, the hazard and the
    events for the kept frames and what they read only, and gives the whole sequence's values."""
    m = _busy_refinement(refine_context=refine_context)
    torch.nn.init.normal_(m.refinement.template.weight, std=0.5)  # events visible in the output
    T = m.refine_context + 16
    exp, audio, noise = torch.randn(1, T, 58), torch.randn(1, T, 16), torch.randn(1, m.refinement.noise_dim, T)
    noise[:, -1] = -4.0  # a frame whose blink candidate fires for sure (hazard starts at ~1 %: Phi(-4) < p)
    with torch.no_grad():
        full, fparts = m.refine(exp, audio, noise, parts=True)
        for keep in (1, 16, T):
            tail, tparts = m.refine(exp, audio, noise, parts=True, keep=keep)
            assert tail.shape == (1, keep, 58)
            torch.testing.assert_close(tail, full[:, T - keep :], rtol=0, atol=1e-5)
            for k in ("onset_logit", "hazard", "events"):
                torch.testing.assert_close(tparts[k], fparts[k][:, T - keep :], rtol=0, atol=1e-5)
    assert fparts["events"][0, -1].abs().max() > 0  # the event term is exercised


def test_causal_refinement_reads_its_context_and_nothing_else():
    m = _busy_refinement(refine_context=8)
    R = m.refine_context
    # the larger of the detail's (convs 4, squeeze 7, attention 8, out conv 2) and the blink's
    # (convs 4, hazard 20, refractory 8, template 11) receptive fields
    assert R == max(4 + 7 + 8 + 2, 4 + 20 + 8 + 11) and m.refinement.context == R
    assert _busy_refinement().refine_context == 4 + 31 + 32 + 2  # the default: the detail's, 69
    T, t0 = 120, 60
    exp, audio, noise = torch.randn(1, T, 58), torch.randn(1, T, 16), torch.randn(1, m.refinement.noise_dim, T)
    changed_exp, changed_audio, changed_noise = exp.clone(), audio.clone(), noise.clone()
    changed_exp[:, t0] += 1.0
    changed_audio[:, t0] += 1.0
    changed_noise[:, :, t0] += 1.0
    with torch.no_grad():
        base = m.refine(exp, audio, noise)
        for out in (m.refine(changed_exp, audio, noise), m.refine(exp, changed_audio, noise),
                    m.refine(exp, audio, changed_noise)):  # fmt: skip
            diff = (out - base).abs().amax(dim=(0, 2))
            assert diff[:t0].max() == 0  # nothing before the change: causal
            assert diff[t0] > 0  # the frame itself
            assert diff[t0 + R + 1 :].max() == 0  # nothing beyond the receptive field
    # the authors' mode: same parameters, bidirectional over the whole sequence
    whole = REALM(REALMConfig(spec="arkit58", audio_dim=16, d_model=32, ff_dim=64, refine_dim=32, refine_ff=64,
                              refine_mode="whole"))  # fmt: skip
    assert {k: v.shape for k, v in whole.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
    whole.load_state_dict(m.state_dict())
    whole.eval()
    with torch.no_grad():
        diff = (whole.refine(changed_exp, audio, noise) - whole.refine(exp, audio, noise)).abs().amax(dim=(0, 2))
    assert diff[:t0].max() > 0 and whole.refine_context == 0


def test_refining_a_sequence_does_not_depend_on_its_chunking():
    from realm.models.realm import RefineStream, SequenceNoise, refine_sequence

    m = _busy_refinement(refine_context=8)
    coarse, audio = torch.randn(1, 203, 58), torch.randn(1, 203, 16)
    with torch.no_grad():
        whole = refine_sequence(m, coarse, audio, seed=4, sample=1, chunk=512)
        assert torch.allclose(whole, refine_sequence(m, coarse, audio, seed=4, sample=1, chunk=7), atol=1e-5)
        rs = RefineStream(m, seed=4, sample=1)
        pushed = torch.cat([rs.push(coarse[:, a : a + 16], audio[:, a : a + 16]) for a in range(0, 203, 16)], dim=1)
        assert torch.allclose(whole, pushed, atol=1e-5)
        assert not torch.allclose(whole, refine_sequence(m, coarse, audio, seed=4, sample=2))
    noise = SequenceNoise(32, seed=4, sample=1)
    assert torch.equal(noise(10, 40)[..., 5:], noise(15, 40)) and torch.equal(noise(-20, 3)[..., 20:], noise(0, 3))


@pytest.mark.parametrize("refine_context", [8, 32])
def test_the_incremental_refinement_gives_what_the_whole_sequence_gives(refine_context):
    """Streaming refines each frame once (Refinement.step carries every causal layer's context);
    pushed in chunks of any size it gives what the whole-sequence forward gives, events included."""
    from realm.models.realm import RefineStream, SequenceNoise, refine_prefix

    m = _busy_refinement(refine_context=refine_context)
    torch.nn.init.normal_(m.refinement.template.weight, std=0.5)  # events visible in the output
    torch.nn.init.constant_(m.refinement.hazard[-1].bias, -1.0)  # a blink candidate every few frames
    T, R = 150, m.refine_context
    coarse, audio = torch.randn(1, T, 58), torch.randn(1, T, 16)
    assert m.refinement.steppable
    with torch.no_grad():
        mp, ap = refine_prefix(coarse, audio, R)
        noise = SequenceNoise(m.refinement.noise_dim, seed=4, sample=1)(-R, T)
        whole, parts = m.refine(mp, ap, noise, parts=True)
        for size in (1, 16, 37, T):
            rs = RefineStream(m, seed=4, sample=1)
            pushed = torch.cat([rs.push(coarse[:, a : a + size], audio[:, a : a + size]) for a in range(0, T, size)], 1)
            torch.testing.assert_close(pushed, whole[:, R:], rtol=0, atol=1e-5)
    assert (parts["events"][0, R:].abs().amax(-1) > 1e-3).sum() > 5  # the event term is exercised


def test_first_window_integrates_from_frame_zero_or_from_the_guide():
    torch.manual_seed(0)
    kw = dict(spec="arkit58", audio_dim=16, d_model=32, ff_dim=64)
    audio, f0 = torch.randn(1, 32, 16), torch.zeros(1, 58)
    with torch.no_grad():
        authors = REALM(REALMConfig(first_window="frame0", **kw)).eval()
        torch.nn.init.normal_(authors.waypoint[2].weight, std=1.0)  # a waypoint away from frame 0
        out, aux = authors(audio, f0, refine=False)
        assert torch.equal(out[:, :16], f0.unsqueeze(1).expand(-1, 16, -1))  # untrained deltas are 0: frame 0 held
        guide = REALM(REALMConfig(first_window="guide", **kw)).eval()
        guide.load_state_dict(authors.state_dict())
        out2, _ = guide(audio, f0, refine=False)
    rot = authors.spec.block("rotation").slice
    assert torch.allclose(out2[0, 1:16, rot], aux["waypoint"].expand(15, -1))  # jumps to the waypoint at frame 1
    assert REALMConfig.from_dict({}).first_window == "guide" and REALMConfig.from_dict({}).refine_mode == "whole"
    assert REALMConfig().first_window == "frame0" and REALMConfig().refine_mode == "causal"
    with pytest.raises(ValueError, match="refine_mode"):
        REALMConfig(refine_mode="both")


def test_fast_events_are_drawn_from_their_noise_and_average_to_nothing():
    """A blink: candidates where Phi(eps_t) < p_t, an onset at a candidate with no other in the 8
    frames before it, a template drawn after it, minus the onset's probability q_t."""
    m = _busy_refinement()
    assert m.events == ["blink"] and m.refinement.noise_dim == 32 + 1 and m.config.event_refractory == 9
    assert REALM(REALMConfig(spec="vico70", audio_dim=16, d_model=32, ff_dim=64)).events == []  # no eyelids
    ref = m.refinement
    blink = torch.zeros(ref.template.weight.shape)
    blink[m.spec.channel("eyeBlinkLeft"), 0] = torch.tensor([0.0, 0.0, 1.0, 2.0, 2.0, 1.0] + [0.0] * 6).flip(0)
    col = m.spec.channel("eyeBlinkLeft")
    with torch.no_grad():
        ref.template.weight.copy_(blink)
        ref.hazard[-1].bias.fill_(-2.0)  # p about 12 % a frame: candidates often fall within 8 frames
        T = 300
        exp, audio = torch.randn(1, T, 58), torch.randn(1, T, 16)
        noise = torch.randn(1, ref.noise_dim, T)
        given = torch.zeros(1, T, 1)
        given[0, 100] = 1.0
        out, parts = m.refine(exp, audio, noise, events=given, parts=True)
        p = parts["hazard"][0, :, 0]
        q = torch.stack([p[t] * torch.prod(1 - p[max(0, t - 8) : t]) for t in range(T)])  # by hand
        assert torch.allclose(torch.sigmoid(parts["onset_logit"][0, :, 0]), q, atol=1e-5)
        expected = F.conv1d(F.pad((given[0, :, 0] - q)[None, None], (11, 0)), blink[col : col + 1, :, :])[0, 0]
        assert torch.allclose(parts["events"][0, :, col], expected, atol=1e-5)  # the template after the onset
        assert parts["events"][0, 103, col] > 1.5  # two frames of the rise after frame 100, minus q
        # drawn: an onset at each candidate that has no candidate in the 8 frames before it
        drawn, parts = m.refine(exp, audio, noise, parts=True)
        cand = (0.5 * (1 + torch.erf(noise[0, -1] / 2**0.5)) < p).float()
        z = torch.stack([cand[t] * (cand[max(0, t - 8) : t].sum() == 0) for t in range(T)]).float()
        assert 0 < z.sum() < cand.sum()  # some candidates fell in a refractory period
        gaps = torch.diff(torch.nonzero(z)[:, 0])
        assert gaps.min() >= 9
        expected = F.conv1d(F.pad((z - q)[None, None], (11, 0)), blink[col : col + 1, :, :])[0, 0]
        assert torch.allclose(parts["events"][0, :, col], expected, atol=1e-5)
        # averaged over noise draws the event term vanishes: detail, not an offset
        mean = torch.stack([m.refine(exp, audio, parts=True)[1]["events"][0, :, col] for _ in range(400)]).mean(0)
    assert mean.abs().mean() < 0.05 and parts["events"][0, :, col].abs().mean() > 0.1


@pytest.mark.parametrize("mode", ["causal", "whole"])
def test_odd_detail_has_no_offset_and_needs_the_noise(mode):
    """detail="odd": N(eps) - N(-eps) over 2, so opposite noise draws average to the input exactly."""
    m = _busy_refinement(refine_mode=mode, refine_events=())
    torch.nn.init.normal_(m.refinement.out.bias, std=0.1)  # an offset the free detail would add
    exp, audio = torch.randn(2, 40, 58), torch.randn(2, 40, 16)
    noise = torch.randn(2, m.refinement.noise_dim, 40)
    with torch.no_grad():
        plus, minus = m.refine(exp, audio, noise), m.refine(exp, audio, -noise)
        assert torch.allclose(plus + minus, 2 * exp, atol=1e-5)  # no offset, whatever the weights
        assert (plus - exp).abs().mean() > 1e-3  # and detail where there is noise
        assert torch.allclose(m.refine(exp, audio, torch.zeros_like(noise)), exp, atol=1e-6)
        free = _busy_refinement(refine_mode=mode, refine_events=(), detail="free")
        torch.nn.init.normal_(free.refinement.out.bias, std=0.1)
        assert (free.refine(exp, audio, torch.zeros_like(noise)) - exp).abs().mean() > 1e-2  # the authors' can


def test_speaker_encoder_computes_only_the_window_it_returns_and_the_same_values():
    torch.manual_seed(0)
    model = REALM(REALMConfig(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, audio_context=16)).eval()
    audio = torch.randn(3, 32, 20)
    with torch.no_grad():
        full = model.audio_encoder(audio)  # every frame, context included
        window = model.encode_window(audio)  # the last W frames' queries only
    assert window.shape == (3, 16, 32)
    torch.testing.assert_close(window, full[:, -16:], atol=1e-5, rtol=0)
    assert not torch.allclose(window, model.audio_encoder(audio[:, -16:])[:, -16:].detach(), atol=1e-3)  # context read


def test_the_cpu_attention_kernel_changes_speed_not_maths():
    from realm.threads import cpu_attention

    torch.manual_seed(0)
    model = REALM(REALMConfig(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, dropout=0.0, zero_init_heads=False))
    audio, f0 = torch.randn(2, 48, 20), torch.randn(2, 58)
    grads = []
    for ctx in (lambda: torch.enable_grad(), lambda: cpu_attention("cpu")):
        model.zero_grad()
        with ctx():
            motion, _ = model.rollout(audio, f0)
        motion.pow(2).mean().backward()
        grads.append((motion.detach(), model.decoder.queries.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-6, rtol=1e-4)


def test_latent_windows_make_rollouts_samples():
    torch.manual_seed(0)
    model = REALM(REALMConfig(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, latent_dim=4, zero_init_heads=False)).eval()
    audio, f0 = torch.randn(1, 48, 20), torch.randn(1, 58)
    z = torch.randn(2, 3, 4)
    with torch.no_grad():
        a, _ = model.rollout(audio.expand(2, -1, -1), f0.expand(2, -1), latents=z)
        b, _ = model.rollout(audio, f0, latents=z[1:])
        with pytest.raises(ValueError, match="needs each window's latent"):
            model.decoder(torch.zeros(1, 16, 32), torch.zeros(1, 16, 58))
    assert (a[0, 1:] - a[1, 1:]).abs().max() > 1e-3  # different latents, different motion
    torch.testing.assert_close(a[1:], b)  # a sample depends on its own latents only
    assert model.param_counts()["decoder"] - REALM(REALMConfig(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64)
                                                   ).param_counts()["decoder"] == 4 * 32 + 32  # fmt: skip
    assert not hasattr(REALM(REALMConfig(spec="arkit58", audio_dim=20)).decoder, "latent")  # 0: the paper's decoder


@pytest.mark.parametrize("form,into", [("odd", "deltas"), ("diff", "deltas"), ("odd", "offset")])
def test_a_latent_branch_leaves_the_zero_latent_rollout_to_the_decoder(form, into):
    """latent_branch: with every latent 0 the rollout does not depend on the branch (it is the
    deterministic decoder's); with latents the samples differ, through the branch alone."""
    torch.manual_seed(0)
    cfg = REALMConfig(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, latent_dim=4, latent_branch=True,
                      branch_form=form, branch_into=into, zero_init_heads=False)  # fmt: skip
    model = REALM(cfg).eval()
    audio, f0 = torch.randn(1, 48, 20), torch.randn(1, 58)
    z = torch.randn(2, 3, 4)
    with torch.no_grad():
        zero, _ = model.rollout(audio, f0, latents=torch.zeros(1, 3, 4))
        a, _ = model.rollout(audio.expand(2, -1, -1), f0.expand(2, -1), latents=z)
        for prm in model.decoder.branch.parameters():
            prm.add_(torch.randn_like(prm))  # another branch
        zero2, _ = model.rollout(audio, f0, latents=torch.zeros(1, 3, 4))
        b, _ = model.rollout(audio.expand(2, -1, -1), f0.expand(2, -1), latents=z)
        model.decoder.branch[2].weight.zero_()
        model.decoder.branch[2].bias.zero_()  # a branch that adds nothing: samples = the zero-latent rollout
        c, _ = model.rollout(audio.expand(2, -1, -1), f0.expand(2, -1), latents=z)
    torch.testing.assert_close(zero, zero2)  # the branch does not touch the zero-latent rollout
    assert (a[0, 1:] - a[1, 1:]).abs().max() > 1e-3 and (a - b).abs().max() > 1e-3  # samples, by the branch
    torch.testing.assert_close(c, zero.expand(2, -1, -1))  # the latent reaches the motion only through it
    with pytest.raises(ValueError, match="needs latent_dim"):
        REALMConfig(latent_branch=True)


def test_branch_queries_keeps_the_decoders_own_latent_path_beside_the_branch():
    """branch_queries: a model with a latent branch that adds nothing generates exactly what the same
    weights without the branch generate (the latent still reaches the queries: a frozen decoder keeps its
    spread); a branch that adds something moves the samples but not the zero-latent rollout."""
    torch.manual_seed(0)
    kw = dict(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, latent_dim=4, zero_init_heads=False)
    plain = REALM(REALMConfig(**kw)).eval()
    both = REALM(REALMConfig(**kw, latent_branch=True, branch_queries=True, branch_into="offset")).eval()
    only = REALM(REALMConfig(**kw, latent_branch=True, branch_into="offset")).eval()
    for m in (both, only):
        missing, unexpected = m.load_state_dict(plain.state_dict(), strict=False)
        assert not unexpected and all(k.startswith(("decoder.branch", "offset_logit", "out_bounds")) for k in missing), missing
    audio, f0, z = torch.randn(1, 48, 20), torch.randn(1, 58), torch.randn(2, 3, 4)
    with torch.no_grad():
        for m in (both, only):
            m.decoder.branch[2].weight.zero_()
            m.decoder.branch[2].bias.zero_()  # a branch that adds nothing
        ref, _ = plain.rollout(audio.expand(2, -1, -1), f0.expand(2, -1), latents=z)
        out, _ = both.rollout(audio.expand(2, -1, -1), f0.expand(2, -1), latents=z)
        alone, _ = only.rollout(audio.expand(2, -1, -1), f0.expand(2, -1), latents=z)
        zero, _ = both.rollout(audio, f0, latents=torch.zeros(1, 3, 4))
        both.decoder.branch[2].weight.normal_()
        moved, _ = both.rollout(audio.expand(2, -1, -1), f0.expand(2, -1), latents=z)
        zero2, _ = both.rollout(audio, f0, latents=torch.zeros(1, 3, 4))
    torch.testing.assert_close(out, ref)  # the decoder's own latent path, unchanged
    assert (ref[0, 1:] - ref[1, 1:]).abs().max() > 1e-3  # ... which makes samples
    torch.testing.assert_close(alone, alone[:1].expand(2, -1, -1))  # without branch_queries the branch is the only path
    assert (moved - out).abs().max() > 1e-3  # the branch adds to the samples
    torch.testing.assert_close(zero, zero2)  # and not to the zero-latent rollout
    with pytest.raises(ValueError, match="needs latent_branch"):
        REALMConfig(latent_dim=4, branch_queries=True)


def test_branch_exclude_leaves_its_channels_to_the_decoder():
    """branch_exclude: the named channels of a latent-branch model's samples are the zero-latent
    rollout's exactly (the decoder's alone); the other channels of the branch's blocks still spread."""
    torch.manual_seed(0)
    out = ["mouthFrownLeft", "mouthFrownRight"]
    cfg = REALMConfig(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, latent_dim=4, latent_branch=True,
                      branch_into="offset", branch_blocks=("expression",), branch_exclude=out, zero_init_heads=False)
    model = REALM(cfg).eval()
    names = model.spec.names
    cols, smile = [names.index(n) for n in out], names.index("mouthSmileLeft")
    audio, f0, z = torch.randn(1, 48, 20), torch.randn(1, 58), 3 * torch.randn(2, 3, 4)
    with torch.no_grad():
        zero, _ = model.rollout(audio, f0, latents=torch.zeros(1, 3, 4))
        a, _ = model.rollout(audio.expand(2, -1, -1), f0.expand(2, -1), latents=z)
    torch.testing.assert_close(a[..., cols], zero[..., cols].expand(2, -1, -1))  # the decoder's alone
    assert (a[..., smile] - zero[..., smile]).abs().max() > 1e-3  # the branch still moves the smile
    assert model.decoder.branch_mask[cols].sum() == 0 and model.decoder.branch_mask.sum() == 52 - 2
    with pytest.raises(ValueError, match="no channel 'frown'"):
        REALM(REALMConfig(spec="arkit58", audio_dim=20, latent_dim=4, latent_branch=True, branch_exclude=("frown",)))
    with pytest.raises(ValueError, match="needs latent_branch"):
        REALMConfig(latent_dim=4, branch_exclude=("mouthFrownLeft",))


def test_the_odd_latent_branch_is_zero_mean_over_the_latent():
    """branch_form="odd": a window's deltas at z and at -z average to its deltas at z = 0 (the
    samples' mean is the zero-latent rollout's, so a sample carries no bias to integrate); the
    "diff" form (0 at z = 0 only) does not, which is the drift measured on long inputs."""
    torch.manual_seed(0)
    fused, history, z = torch.randn(3, 16, 32), torch.randn(3, 16, 58), torch.randn(3, 4)
    for form in ("odd", "diff"):
        cfg = REALMConfig(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, latent_dim=4, latent_branch=True,
                          branch_form=form, zero_init_heads=False)  # fmt: skip
        dec = REALM(cfg).eval().decoder
        with torch.no_grad():
            plus, minus, zero = (dec(fused, history, latent=v)[0] for v in (z, -z, torch.zeros_like(z)))
        assert (plus - zero).abs().max() > 1e-3  # the latent moves the deltas
        gap = ((plus + minus) / 2 - zero).abs().max().item()
        assert gap < 1e-6 if form == "odd" else gap > 1e-3, (form, gap)
    with pytest.raises(ValueError, match="branch_form"):
        REALMConfig(latent_dim=4, latent_branch=True, branch_form="even")
    assert REALMConfig.from_dict({"latent_dim": 4, "latent_branch": True}).branch_form == "diff"  # saved before


def test_the_branch_offset_is_a_pulse_the_decoder_never_integrates():
    """branch_into="offset": a sample is the zero-latent rollout plus an offset that the decoder's
    history never holds. With a latent in the first window only, the offset after it decays by
    (1 - mu) a frame, channel by channel, and nothing else differs: the decoder integrated none of
    it (the same with branch_into="deltas" keeps a step that does not decay)."""
    torch.manual_seed(0)
    audio, f0, z = torch.randn(1, 48, 20), torch.randn(1, 58), torch.zeros(1, 3, 4)
    z[0, 0] = torch.randn(4) * 3
    for into in ("offset", "deltas"):
        torch.manual_seed(1)
        cfg = REALMConfig(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, latent_dim=4, latent_branch=True,
                          branch_into=into, offset_decay_init=0.1, zero_init_heads=False, rest_leak=True,
                          offset_bounds=False)  # fmt: skip
        model = REALM(cfg).eval()
        with torch.no_grad():
            sample, _ = model.rollout(audio, f0, latents=z)
            zero, _ = model.rollout(audio, f0, latents=torch.zeros_like(z))
        o = (sample - zero)[0]  # (T, D): the first window's latent, carried on
        assert o[1:16].abs().max() > 1e-3  # the latent shows in its own window
        if into == "offset":
            mu = torch.sigmoid(model.offset_logit)
            torch.testing.assert_close(o[16:], o[15] * (1 - mu) ** torch.arange(1, 33)[:, None], atol=1e-5, rtol=0)
        else:  # integrated: the decoder reads it back and it leaks away at the rest leak's pace only
            assert ((o[47] - o[15]).abs() / o[15].abs().clamp(min=1e-3)).median() > 0.05
            assert not hasattr(model, "offset_logit")
    # branch_blocks: the branch moves the expression only; head rotation is the zero-latent rollout's
    cfg = REALMConfig(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, latent_dim=4, latent_branch=True,
                      branch_into="offset", branch_blocks=("expression",), zero_init_heads=False)  # fmt: skip
    model = REALM(cfg).eval()
    with torch.no_grad():
        sample, _ = model.rollout(audio, f0, latents=torch.randn(1, 3, 4) * 3)
        zero, _ = model.rollout(audio, f0, latents=torch.zeros(1, 3, 4))
    ex = model.spec.block("expression").slice
    rest = torch.ones(58, dtype=torch.bool)
    rest[ex] = False
    assert (sample - zero)[..., ex].abs().max() > 1e-3
    torch.testing.assert_close(sample[..., rest], zero[..., rest], atol=0, rtol=0)
    with pytest.raises(ValueError, match="no block 'face'"):
        REALM(REALMConfig(spec="arkit58", latent_dim=4, latent_branch=True, branch_blocks=("face",)))
    with pytest.raises(ValueError, match="needs latent_branch"):
        REALMConfig(latent_dim=4, branch_into="offset")
    assert REALMConfig.from_dict({"latent_dim": 4, "latent_branch": True, "branch_into": "offset"}).offset_bounds is False


def test_react_shift_moves_a_windows_latent_and_its_labels_later():
    """react_shift s: window w's latent reaches the motion from frame w W + s (frames before read the
    previous window's), and the classifier's label for window w is a reaction starting in
    [w W + s, (w + 1) W + s)."""
    from realm.motion import NormStats, get_spec
    from realm.train import REALMTask, TrainConfig

    torch.manual_seed(0)
    kw = dict(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, latent_dim=4, latent_branch=True,
              zero_init_heads=False, dropout=0.0)  # fmt: skip
    model = REALM(REALMConfig(**kw, react_shift=8)).eval()
    audio, f0 = torch.randn(1, 48, 20), torch.randn(1, 58)
    with torch.no_grad():
        zero, _ = model.rollout(audio, f0, latents=torch.zeros(1, 3, 4))
        for w in (0, 1):
            z = torch.zeros(1, 3, 4)
            z[0, w] = 2 * torch.randn(4)
            x, _ = model.rollout(audio, f0, latents=z)
            diff = (x - zero)[0].abs().amax(dim=1)  # (T,)
            first = 16 * w + 8
            assert float(diff[:first].max()) == 0.0 and float(diff[first]) > 1e-4, (w, diff[: first + 2])
    with pytest.raises(ValueError, match="react_shift"):
        REALMConfig(**kw, react_shift=16)
    with pytest.raises(ValueError, match="react_shift"):
        REALMConfig(spec="arkit58", latent_dim=4, react_shift=8)  # the queries' latent: not shifted
    # labels: smiles starting at frames 36 and 40 of a 64-frame clip land in windows 1 and 2 with shift 8
    from realm.data.synth import ease_envelope

    spec = get_spec("arkit58")
    stats = NormStats(mean=np.full(58, 0.1), std=np.full(58, 0.5), spec="arkit58")
    task = REALMTask({**kw, "react_gate": True, "react_shift": 8}, asdict_jsonable(TrainConfig(coarse_loss="energy")), 1)
    task.stats = stats
    clips = []
    for onset in (36, 40):
        raw = np.zeros((64, 58))
        for name in ("mouthSmileLeft", "mouthSmileRight"):
            raw[:, spec.names.index(name)] = 0.6 * ease_envelope(64, onset, 7, 15, 10)
        clips.append(stats.apply(raw))
    labels = task.react_labels(torch.from_numpy(np.stack(clips)).float(), 4)
    torch.testing.assert_close(labels, torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]))
    # the last window's span runs 8 frames past a 64-frame clip: its label cannot be seen, so it is not scored
    from realm.train import REALMLoss

    aux = {"bounds": [], "alpha": torch.ones(1, 64, 1), "waypoint": None,
           "react_logit": torch.tensor([[0.0, 0.0, 0.0, -30.0]]), "react_labels": torch.tensor([[0.0, 0.0, 0.0, 1.0]])}
    x, mask = torch.zeros(1, 64, 58), torch.ones(1, 64, dtype=torch.bool)
    for shift, bce in ((8, math.log(2)), (0, (3 * math.log(2) + 30) / 4)):
        m = REALM(REALMConfig(**kw, react_gate=True, react_shift=shift))
        got = float(REALMLoss(m, TrainConfig())(x, x, mask, aux)["react"])
        assert abs(got - bce) < 1e-3, (shift, got, bce)


def test_react_threshold_keeps_the_classifiers_floor_from_opening_the_spread():
    """react_threshold t: the latent is scaled by (p - t) / (1 - t), 0 below t: with p at 0.04 (the
    classifier's floor, e.g. in silence) and t 0.05 every sample is the zero-latent rollout; with p
    near 1 the threshold changes almost nothing; t = 0 is p itself."""
    torch.manual_seed(0)
    kw = dict(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, latent_dim=4, latent_branch=True,
              branch_into="offset", react_gate=True, zero_init_heads=False)  # fmt: skip
    model = REALM(REALMConfig(**kw)).eval()
    audio, f0, z = torch.randn(1, 48, 20), torch.randn(1, 58), torch.randn(1, 3, 4) * 2
    torch.nn.init.zeros_(model.decoder.react[-1].weight)
    with torch.no_grad():
        zero, _ = model.rollout(audio, f0, latents=torch.zeros_like(z))
        spread = {}
        for p in (0.04, 0.999):
            torch.nn.init.constant_(model.decoder.react[-1].bias, math.log(p / (1 - p)))
            for t in (0.0, 0.05):
                model.config.react_threshold = t
                spread[p, t] = float((model.rollout(audio, f0, latents=z)[0] - zero).abs().max())
    assert spread[0.04, 0.05] == 0.0 < 1e-3 < spread[0.04, 0.0]
    assert abs(spread[0.999, 0.05] - spread[0.999, 0.0]) < 0.1 * spread[0.999, 0.0]
    with pytest.raises(ValueError, match="react_threshold"):
        REALMConfig(**kw, react_threshold=1.0)
    with pytest.raises(ValueError, match="needs react_gate"):
        REALMConfig(spec="arkit58", latent_dim=4, react_threshold=0.05)
    with pytest.raises(ValueError, match="need latent_branch"):
        REALMConfig(spec="arkit58", latent_dim=4, branch_blocks=("expression",))
    with pytest.raises(ValueError, match="offset_floor"):
        REALMConfig(spec="arkit58", latent_dim=4, latent_branch=True, offset_floor="rest")


def test_the_branch_offset_keeps_each_channel_inside_its_range():
    """offset_bounds: set from the stats, a blendshape's samples stay inside 0..1 (in normalised
    units) however far the offset goes, the zero-latent rollout is untouched (a channel the decoder
    itself takes past the range is not pulled further out), and head rotation keeps +-30 / 20 deg."""
    from realm.motion import NormStats

    torch.manual_seed(0)
    cfg = REALMConfig(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, latent_dim=4, latent_branch=True,
                      branch_into="offset", zero_init_heads=False)  # fmt: skip
    model = REALM(cfg).eval()
    rng = np.random.default_rng(0)
    stats = NormStats(rng.uniform(0, 0.3, 58).astype(np.float32), rng.uniform(0.01, 0.1, 58).astype(np.float32), "arkit58")
    model.set_out_bounds(stats)
    lo, hi = model.out_bounds
    ex = model.spec.block("expression").slice
    torch.testing.assert_close(lo[ex], torch.as_tensor(-stats.mean[ex] / stats.std[ex]))
    torch.testing.assert_close(hi[ex], torch.as_tensor((1 - stats.mean[ex]) / stats.std[ex]))
    with torch.no_grad():
        model.decoder.branch[2].weight.mul_(200.0)  # offsets far past every range
        audio, f0 = torch.randn(1, 48, 20), torch.randn(1, 58)
        z = torch.randn(4, 3, 4) * 2
        zero, _ = model.rollout(audio, f0, latents=torch.zeros(1, 3, 4))
        free = model.offset_logit.new_tensor([-math.inf, math.inf])[:, None].expand(2, 58).clone()
        x, _ = model.rollout(audio.expand(4, -1, -1), f0.expand(4, -1), latents=z)
        model.out_bounds.copy_(free)
        unbounded, _ = model.rollout(audio.expand(4, -1, -1), f0.expand(4, -1), latents=z)
        model.set_out_bounds(stats)
        zero2, _ = model.rollout(audio, f0, latents=torch.zeros(1, 3, 4))
    torch.testing.assert_close(zero, zero2)
    assert (unbounded < lo - 1).any() and (unbounded > hi + 1).any()  # the offset alone would leave the range
    floor, ceil = torch.minimum(zero, lo), torch.maximum(zero, hi)
    assert (x >= floor - 1e-5).all() and (x <= ceil + 1e-5).all()
    inside = (unbounded >= lo) & (unbounded <= hi)
    torch.testing.assert_close(x[inside], unbounded[inside])  # inside the range the offset is as it was
    # offset_floor="rest": nor below the frame the rollout started from (the resting face), where the
    # decoder's own motion is above it; the negative half of the samples rests there
    model.config.offset_floor = "rest"
    with torch.no_grad():
        rest, _ = model.rollout(audio.expand(4, -1, -1), f0.expand(4, -1), latents=z)
    assert model.rest_floor.tolist() == [i < ex.stop and i >= ex.start for i in range(58)]  # blendshapes, not the head
    floor = torch.minimum(zero, torch.where(model.rest_floor, torch.maximum(lo, f0[:, None]), lo))
    assert (rest >= floor - 1e-5).all() and (x < floor - 1e-3).any()  # "range" went below the rest, "rest" does not
    torch.testing.assert_close(rest[x >= floor], x[x >= floor])
    with pytest.raises(ValueError, match="offset_floor"):
        REALMConfig(spec="arkit58", latent_dim=4, latent_branch=True, branch_into="offset", offset_floor="zero")
    with pytest.raises(ValueError, match="branch_into"):
        REALMConfig(latent_dim=4, latent_branch=True, branch_into="pulse")


def test_energy_score_prefers_the_true_spread_to_its_mean():
    from realm.train import REALMLoss, TrainConfig

    model = REALM(REALMConfig(spec="arkit58", audio_dim=20, latent_dim=4))
    loss = REALMLoss(model, TrainConfig(coarse_loss="energy", coarse_samples=4))
    g = torch.Generator().manual_seed(0)
    B, T, e = 256, 32, model.exp

    def windows(n):  # each window either reacts (+1 on the expression) or not, with probability 1/2
        x = torch.zeros(n, T, 58)
        x[..., e] = (torch.rand(n, T // 16, 1, 1, generator=g) < 0.5).float().repeat_interleave(16, 1).squeeze(-1)
        return x

    gt, mask = windows(B), torch.ones(B, T, dtype=torch.bool)
    true = torch.cat([windows(B) for _ in range(4)])  # 4 samples of the true distribution
    mean = torch.full_like(true, 0.0)
    mean[..., e] = 0.5  # the conditional mean, what MSE learns: every sample alike
    narrow = 0.5 + 0.2 * (true - 0.5)  # the right timing, too little spread
    sl, _, scale = loss.energy[0]
    es = {k: float(loss.energy_score(v, gt, mask.float(), sl, scale)) for k, v in
          {"true": true, "mean": mean, "narrow": narrow}.items()}  # fmt: skip
    assert es["true"] < es["narrow"] < es["mean"], es


def test_energy_score_per_channel_ranks_the_truth_first_and_sees_a_few_reacting_channels():
    """Both groupings rank the true distribution first; when 3 of the 52 blendshapes react (a smile)
    over small noise on the rest, the per-channel score separates it from the mean more (1.9x here)."""
    from realm.train import REALMLoss, TrainConfig

    model = REALM(REALMConfig(spec="arkit58", audio_dim=20, latent_dim=4))
    g = torch.Generator().manual_seed(0)
    B, T, e = 256, 32, model.exp

    def windows(n):  # 3 channels react (+1) with probability 1/2 a window; the others carry noise
        x = torch.zeros(n, T, 58)
        x[..., e] = 0.1 * torch.randn(n, T, 52, generator=g)
        react = (torch.rand(n, T // 16, 1, generator=g) < 0.5).float().repeat_interleave(16, 1)
        x[..., :3] += react
        return x

    gt, mask = windows(B), torch.ones(B, T).float()
    true = torch.cat([windows(B) for _ in range(4)])
    mean = true.clone()
    mean[..., :3] = 0.5  # every sample reacts by half: the conditional mean
    scores = {}
    for kind in ("window", "channel"):
        loss = REALMLoss(model, TrainConfig(coarse_loss="energy", coarse_samples=4, energy_groups=kind))
        sl, _, scale = loss.energy[0]
        scores[kind] = {k: float(loss.energy_score(v, gt, mask, sl, scale)) for k, v in (("true", true), ("mean", mean))}
    assert all(v["true"] < v["mean"] for v in scores.values()), scores
    gap = {k: (v["mean"] - v["true"]) / v["true"] for k, v in scores.items()}
    assert gap["channel"] > 1.5 * gap["window"], gap  # measured: 0.147 against 0.079


def test_energy_exclude_scores_the_blink_channels_by_mse_not_by_their_spread():
    """With energy_exclude=("blink",) samples that differ only on the eye-blink channels get the
    energy score of samples that do not, and an error there counts in the MSE (the refinement owns blinks)."""
    from realm.motion import get_spec
    from realm.train import REALMLoss, TrainConfig

    model = REALM(REALMConfig(spec="arkit58", audio_dim=20, latent_dim=4))
    spec = get_spec("arkit58")
    blink = [spec.channel("eyeBlinkLeft"), spec.channel("eyeBlinkRight")]
    g = torch.Generator().manual_seed(0)
    B, T = 8, 32
    gt, mask = torch.zeros(B, T, 58), torch.ones(B, T)
    swing = torch.zeros(2 * B, T, 58)
    swing[..., blink] = torch.randn(2 * B, T, 2, generator=g)  # two samples apart on the blinks only
    aux = {"bounds": [], "alpha": torch.ones(2 * B, T, 1), "waypoint": None}
    scores = {}
    for exclude in ((), ("blink",)):
        loss = REALMLoss(model, TrainConfig(coarse_loss="energy", coarse_samples=2, energy_blocks=("expression",),
                                            energy_exclude=exclude))  # fmt: skip
        sl, _, scale = loss.energy[0]
        scores[exclude] = (float(loss.energy_score(swing, gt, mask, sl, scale)),
                           float(loss.energy_score(torch.zeros_like(swing), gt, mask, sl, scale)),
                           float(loss(swing, gt, mask.bool(), aux)["mse"]))  # fmt: skip
    es, still, mse = scores[()]
    assert abs(es - still) > 1e-3 and mse == 0.0  # scored by the energy score, out of the MSE
    es, still, mse = scores[("blink",)]
    assert abs(es - still) < 1e-6 and mse > 0.0  # out of the energy score, in the MSE
    with pytest.raises(ValueError, match="unknown fast events"):
        TrainConfig(energy_exclude=("yawn",))


def test_rest_leak_is_the_leaky_recursion_and_pulls_back_to_the_start_frame():
    torch.manual_seed(0)
    model = REALM(REALMConfig(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, rest_leak=True, rest_leak_init=0.1))
    start, deltas, a = torch.randn(2, 1, 58), 0.1 * torch.randn(2, 16, 58), torch.randn(2, 58)
    lam, x, ref = torch.sigmoid(model.leak_logit), start[:, 0], []
    for k in range(16):
        x = a + (1 - lam) * (x - a) + deltas[:, k]
        ref.append(x)
    torch.testing.assert_close(model.leaky_sum(start, deltas, a), torch.stack(ref, 1), atol=1e-5, rtol=0)
    # a fresh model (zero deltas) started off its anchor decays toward it: 0.9^16 of the offset is left
    out = model.leaky_sum(a.unsqueeze(1) + 1.0, torch.zeros(2, 16, 58), a)
    torch.testing.assert_close(out[:, -1] - a, torch.full((2, 58), 0.9**16), atol=1e-5, rtol=0)
    plain = REALM(REALMConfig(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64))
    assert not hasattr(plain, "leak_logit")  # off: the paper's integration


def test_generation_path_of_the_transformer_layers_is_the_same_maths():
    """Eval without autograd (generation) runs the transformer layers through realm.models.layers; with
    autograd and fast_train off, through the nn modules: the same motion either way (masks included:
    the shifted-ALiBi bias per head, the queries' causal mask)."""
    torch.manual_seed(0)
    m = REALM(REALMConfig(spec="arkit58", audio_dim=16, d_model=32, ff_dim=64, refine_dim=32, refine_ff=64,
                          latent_dim=4, audio_context=8, fast_train=False)).eval()  # fmt: skip
    for p in m.parameters():  # away from the zero-initialised heads: every layer shows in the output
        torch.nn.init.normal_(p, std=0.2) if p.dim() > 1 else None
    audio, frame0, latents = torch.randn(2, 72, 16), torch.randn(2, 58), torch.randn(2, 5, 4)
    with torch.no_grad():
        fast, _ = m.rollout(audio, frame0=frame0, latents=latents)
    slow, _ = m.rollout(audio, frame0=frame0, latents=latents)  # eval with autograd: the nn modules
    assert slow.requires_grad and not fast.requires_grad
    scale = float(fast.abs().max())  # float rounding, summed over 72 autoregressive frames
    torch.testing.assert_close(fast, slow.detach(), rtol=0, atol=1e-5 * max(1.0, scale))
    assert (fast[:, 1:] - fast[:, :1]).abs().max() > 1e-2  # the motion moves: the comparison means something


def test_the_latent_gate_scales_each_window_s_latent_by_what_the_model_hears():
    """latent_gate: the latent's contribution is sigmoid(Linear(mean fused)) times the projected latent:
    open (0.88) at the start, and a shut gate makes every sample the zero-latent rollout."""
    torch.manual_seed(0)
    kw = dict(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, latent_dim=4, zero_init_heads=False)
    plain, gated = REALM(REALMConfig(**kw)).eval(), REALM(REALMConfig(**kw, latent_gate=True)).eval()
    gated.load_state_dict(plain.state_dict(), strict=False)  # the same weights but the gate's
    assert set(gated.state_dict()) - set(plain.state_dict()) == {"decoder.latent_gate.weight", "decoder.latent_gate.bias"}
    audio, f0, z = torch.randn(1, 48, 20), torch.randn(1, 58), torch.randn(1, 3, 4)
    zero = torch.zeros_like(z)
    with torch.no_grad():
        spread = lambda m: (m.rollout(audio, f0, latents=z)[0] - m.rollout(audio, f0, latents=zero)[0]).abs().mean()  # noqa: E731
        assert torch.equal(gated.rollout(audio, f0, latents=zero)[0], plain.rollout(audio, f0, latents=zero)[0])
        assert 0 < spread(gated) < spread(plain)  # open at 0.88: the samples spread a little less
        torch.nn.init.constant_(gated.decoder.latent_gate.bias, -30.0)  # shut: every sample is the mean
        assert float(spread(gated)) < 1e-6


def test_the_reaction_gate_scales_the_latent_by_its_classifier_and_learns_from_the_ground_truth_onsets():
    """react_gate: each window's latent times sigmoid(the classifier's logit), without its gradient; the
    rollout returns the logits; the labels are the windows where the de-normalised ground truth starts a
    smile; the loss's binary cross-entropy trains the classifier (and nothing reaches it through the latent)."""
    import numpy as np

    from realm.data.synth import ease_envelope
    from realm.motion import NormStats, get_spec
    from realm.train import REALMTask, TrainConfig

    with pytest.raises(ValueError, match="react_gate"):
        REALMConfig(spec="arkit58", audio_dim=20, react_gate=True)  # no latent to scale
    with pytest.raises(ValueError, match="react_gate"):
        REALMConfig(spec="arkit58", audio_dim=20, latent_dim=4, react_gate=True, latent_gate=True)
    from realm.train import _check_react_kinds

    with pytest.raises(ValueError, match="no detector"):
        TrainConfig(react_kinds=("smiles",))
    with pytest.raises(ValueError, match="none of"):  # vico70 has no smile channels: nothing to learn from
        _check_react_kinds(("smile", "concern"), "vico70")
    _check_react_kinds(("smile", "nod"), "vico70")  # the nods are labelled (the smiles skipped, with a warning)
    torch.manual_seed(0)
    kw = dict(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, latent_dim=4, zero_init_heads=False, dropout=0.0)
    plain, gated = REALM(REALMConfig(**kw)).eval(), REALM(REALMConfig(**kw, react_gate=True)).eval()
    gated.load_state_dict(plain.state_dict(), strict=False)
    assert {k.split(".")[1] for k in set(gated.state_dict()) - set(plain.state_dict())} == {"react"}
    audio, f0, z = torch.randn(1, 48, 20), torch.randn(1, 58), torch.randn(1, 3, 4)
    with torch.no_grad():
        spread = lambda m: (m.rollout(audio, f0, latents=z)[0] - m.rollout(audio, f0, latents=0 * z)[0]).abs().mean()  # noqa: E731
        torch.nn.init.constant_(gated.decoder.react[-1].bias, -30.0)  # "no reaction here": every sample is the mean
        assert float(spread(gated)) < 1e-6 < float(spread(plain))
        torch.nn.init.constant_(gated.decoder.react[-1].bias, 30.0)  # "a reaction starts": the latent as it is
        torch.nn.init.zeros_(gated.decoder.react[-1].weight)
        torch.testing.assert_close(gated.rollout(audio, f0, latents=z)[0], plain.rollout(audio, f0, latents=z)[0])
        assert gated.rollout(audio, f0, latents=z, samples=1)[1]["react_logit"].shape == (1, 3)
        # react_floor: the latent scaled by floor + (1 - floor) p. With p = 0 and floor f, the samples are
        # the ungated model's with the latent times f (the decoder adds Linear(z) f to its queries)
        torch.nn.init.constant_(gated.decoder.react[-1].bias, -30.0)
        gated.config.react_floor = 1.0  # the gate open
        torch.testing.assert_close(gated.rollout(audio, f0, latents=z)[0], plain.rollout(audio, f0, latents=z)[0])
        gated.config.react_floor = 0.4
        lin = plain.decoder.latent
        scaled = REALM(REALMConfig(**kw)).eval()
        scaled.load_state_dict(plain.state_dict())
        scaled.decoder.latent.weight.mul_(0.4)
        scaled.decoder.latent.bias.copy_(lin.bias * 0.4)
        torch.testing.assert_close(gated.rollout(audio, f0, latents=z)[0], scaled.rollout(audio, f0, latents=z)[0])
        assert 1e-6 < float(spread(gated)) < float(spread(plain))
        gated.config.react_floor = 0.0
    with pytest.raises(ValueError, match="react_floor"):
        REALMConfig(**kw, react_gate=True, react_floor=1.5)

    # labels: a smile starting at frame 40 of a 64-frame clip (window 2 of 4); stats that de-normalise it
    spec = get_spec("arkit58")
    raw = np.zeros((64, 58))
    smile = 0.6 * ease_envelope(64, 40, 7, 15, 10)
    for name in ("mouthSmileLeft", "mouthSmileRight"):
        raw[:, spec.names.index(name)] = smile
    stats = NormStats(mean=np.full(58, 0.1), std=np.full(58, 0.5), spec="arkit58")
    cfg = TrainConfig(coarse_loss="energy", coarse_samples=2, mean_rollout=True, batch_size=2)
    task = REALMTask({**kw, "react_gate": True}, asdict_jsonable(cfg), 1)
    task.stats = stats
    motion = torch.from_numpy(np.stack([stats.apply(raw), stats.apply(np.zeros((64, 58)))])).float()
    labels = task.react_labels(motion, 4)
    torch.testing.assert_close(labels, torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0] * 4]))
    # one training step: the cross-entropy is in the loss and moves the classifier
    batch = {"audio": torch.randn(2, 64, 20), "motion": motion, "mask": torch.ones(2, 64, dtype=torch.bool)}
    task.model.train()
    out = task._stage1(batch)
    assert "react" in out and float(out["react"].detach()) > 0
    out["loss"].backward()
    assert task.model.decoder.react[-1].weight.grad.abs().sum() > 0
    # the classifier's output scales the latent without its gradient: the energy score alone reaches no react weight
    task.model.zero_grad()
    task._stage1(batch)["energy"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in task.model.decoder.react.parameters())


def asdict_jsonable(cfg) -> dict:
    from dataclasses import asdict

    from realm.train.harness import jsonable

    return jsonable(asdict(cfg))


@pytest.mark.parametrize("window", [8, 32])
def test_a_window_other_than_the_history_generates_and_trains(window):
    """window != history (K 16): the bootstrap guide (W frames) becomes a K-frame history, frame 0 in
    front when W < K (a window-8 model used to fail on its first window); both training paths agree."""
    outs = []
    for fast in (True, False):
        torch.manual_seed(0)
        m = REALM(REALMConfig(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, window=window, audio_context=16,
                              fast_train=fast, dropout=0.0, zero_init_heads=False)).train()  # fmt: skip
        audio, f0 = torch.randn(3, 72, 20), torch.randn(3, 58)
        motion, aux = m.rollout(audio, f0)
        assert motion.shape == (3, 72, 58) and torch.equal(motion[:, 0], f0)
        motion.pow(2).mean().backward()
        outs.append(motion.detach())
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_react_condition_plays_the_kind_it_is_told_or_draws_it_from_the_classifier():
    """react_condition: each window's queries get an embedding of which kinds start in it. Told (the
    ground truth in training) it moves the motion from frame w W + react_shift on; drawn, kind k starts
    where Phi(the latent's kind dim) < p_k (at temperature 0: where p_k > 0.5). The embedding starts at 0,
    so a model given react_condition generates, where no kind starts, what the same weights without it generate."""
    from realm.data.synth import ease_envelope
    from realm.motion import NormStats, get_spec
    from realm.train import REALMTask, TrainConfig

    torch.manual_seed(0)
    kinds = ("smile", "concern")
    kw = dict(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, latent_dim=4, zero_init_heads=False, dropout=0.0)
    cond = REALM(REALMConfig(**kw, react_condition=kinds, react_shift=8)).eval()
    plain = REALM(REALMConfig(**kw)).eval()
    missing, unexpected = plain.load_state_dict(cond.state_dict(), strict=False)
    assert not missing and all(k.startswith(("decoder.kind_head", "decoder.kind_embed")) for k in unexpected)
    assert cond.config.latent_width == 6
    audio, f0 = torch.randn(1, 48, 20), torch.randn(1, 58)
    lat = torch.randn(1, 3, 6)
    on, off = torch.ones(1, 3, 2), torch.zeros(1, 3, 2)
    with torch.no_grad():
        before, _ = plain.rollout(audio, f0, latents=lat[..., :4])
        torch.testing.assert_close(cond.rollout(audio, f0, latents=lat, kinds=off)[0], before, atol=0, rtol=0)
        assert (cond.rollout(audio, f0, latents=lat, kinds=on)[0] - before).abs().max() > 1e-3
        base, aux = cond.rollout(audio, f0, latents=lat, kinds=off)
        assert aux["kind_logit"].shape == (1, 3, 2)
        for w in (0, 1):  # window w told "smile": the motion moves from frame w W + 8 on, not before
            k = off.clone()
            k[0, w, 0] = 1
            diff = (cond.rollout(audio, f0, latents=lat, kinds=k)[0] - base)[0].abs().amax(dim=1)
            first = 16 * w + 8
            assert float(diff[:first].max()) == 0.0 and float(diff[first]) > 1e-4, (w, diff[: first + 2])
        # drawn: certain kinds start in every window, impossible ones in none
        head = cond.decoder.kind_head[-1]
        head.weight.zero_()
        for bias, told in ((30.0, on), (-30.0, off)):
            head.bias.fill_(bias)
            torch.testing.assert_close(cond.rollout(audio, f0, latents=lat)[0], cond.rollout(audio, f0, latents=lat, kinds=told)[0])
        # at temperature 0 (kind dims 0, u = 0.5): smile (p 0.55) starts, concern (p 0.45) does not
        head.bias.copy_(torch.tensor([0.2, -0.2]))
        zero = lat.clone()
        zero[..., 4:] = 0
        told = torch.tensor([[[1.0, 0.0]] * 3])
        torch.testing.assert_close(cond.rollout(audio, f0, latents=zero)[0], cond.rollout(audio, f0, latents=zero, kinds=told)[0])
        # kind_draw="one": one kind or none from the first kind dim, kind k with probability p_k
        head.bias.copy_(torch.logit(torch.tensor([0.3, 0.2])))
        cond.config.kind_draw = "one"
        for u, told in ((0.1, [1.0, 0.0]), (0.4, [0.0, 1.0]), (0.7, [0.0, 0.0])):  # [0, 0.3): smile, [0.3, 0.5): concern
            drawn = lat.clone()
            drawn[..., 4] = torch.special.ndtri(torch.tensor(u))
            drawn[..., 5] = -5.0  # the second kind dim is not read
            torch.testing.assert_close(cond.rollout(audio, f0, latents=drawn)[0],
                                       cond.rollout(audio, f0, latents=drawn, kinds=torch.tensor([[told] * 3]))[0])  # fmt: skip
        head.bias.fill_(30.0)  # both certain: p scaled to sum 1, never both at once
        drawn[..., 4] = 0.0
        torch.testing.assert_close(cond.rollout(audio, f0, latents=drawn)[0],
                                   cond.rollout(audio, f0, latents=drawn, kinds=torch.tensor([[[0.0, 1.0]] * 3]))[0])  # fmt: skip
        cond.config.kind_draw = "each"
    with pytest.raises(ValueError, match="twice"):
        REALMConfig(**kw, react_condition=("smile", "smile"))
    with pytest.raises(ValueError, match="kind_draw"):
        REALMConfig(**kw, kind_draw="two")
    REALMConfig(spec="arkit58", react_condition=kinds, react_shift=8)  # the kinds are shifted without a branch
    from realm.train import _check_condition_kinds

    _check_condition_kinds(kinds, "arkit58")
    with pytest.raises(ValueError, match=r"react_condition: no detector of \['wink'\]"):
        _check_condition_kinds(("smile", "wink"), "arkit58")

    # training: per-kind labels from the ground truth's onsets, told to the decoder, the classifier trained
    spec = get_spec("arkit58")
    stats = NormStats(mean=np.full(58, 0.1), std=np.full(58, 0.5), spec="arkit58")
    raw = np.zeros((64, 58))
    for name in ("mouthSmileLeft", "mouthSmileRight"):
        raw[:, spec.names.index(name)] = 0.6 * ease_envelope(64, 40, 7, 15, 10)
    task = REALMTask({**kw, "react_condition": kinds, "react_shift": 8},
                     asdict_jsonable(TrainConfig(coarse_loss="energy", mean_rollout=True)), 1)  # fmt: skip
    task.stats = stats
    motion = torch.from_numpy(np.stack([stats.apply(raw), stats.apply(np.zeros((64, 58)))])).float()
    labels = task.react_labels(motion, 4, kinds)  # the smile at 40 starts in window 2 ([40, 56) with shift 8)
    torch.testing.assert_close(labels[..., 0], torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0] * 4]))
    assert float(labels[..., 1].sum()) == 0.0
    batch = {"audio": torch.randn(2, 64, 20), "motion": motion, "mask": torch.ones(2, 64, dtype=torch.bool)}
    task.model.train()
    out = task._stage1(batch)
    assert float(out["kind"].detach()) > 0
    out["loss"].backward()
    assert task.model.decoder.kind_head[-1].weight.grad.abs().sum() > 0
    assert task.model.decoder.kind_embed.weight.grad.abs().sum() > 0  # the told smile reaches its embedding


def test_the_any_kind_is_told_with_every_reaction_and_drawn_alone_with_what_its_p_leaves():
    """react_condition's "any" (a reaction starts): its label is the union of every detector's onsets
    (a nod too), so it is told with each named kind; drawn, it comes with every named kind drawn and
    alone with what p_any leaves, so its marginal is p_any ("each" and "one" alike)."""
    from realm.data.synth import ease_envelope
    from realm.models.realm import ANY_REACTION
    from realm.motion import NormStats, get_spec
    from realm.train import REALMTask, TrainConfig, _check_condition_kinds

    kinds = ("smile", "concern", ANY_REACTION)
    kw = dict(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, latent_dim=4, zero_init_heads=False, dropout=0.0)
    dec = REALM(REALMConfig(**kw, react_condition=kinds, react_shift=8)).decoder
    p = torch.tensor([[0.2, 0.1, 0.5]])
    for u, want in (([0.1, 0.5, 0.9], [1, 0, 1]), ([0.5, 0.05, 0.9], [0, 1, 1]), ([0.5, 0.5, 0.2], [0, 0, 1]),
                    ([0.5, 0.5, 0.4], [0, 0, 0])):  # alone below (0.5 - 0.28) / 0.72 = 0.306  # fmt: skip
        assert dec.draw_kinds(torch.tensor([u]), p).tolist() == [want], u
    dec.c.kind_draw = "one"  # from u_0: [0, 0.2) smile, [0.2, 0.3) concern, [0.3, 0.5) any alone, else none
    for u0, want in ((0.1, [1, 0, 1]), (0.25, [0, 1, 1]), (0.4, [0, 0, 1]), (0.6, [0, 0, 0])):
        assert dec.draw_kinds(torch.tensor([[u0, 0.0, 0.0]]), p).tolist() == [want], u0
    assert dec.draw_kinds(torch.tensor([[0.35, 0.0, 0.0]]), torch.tensor([[0.2, 0.1, 0.1]])).tolist() == [[0, 0, 0]]
    g = torch.Generator().manual_seed(0)
    for draw in ("each", "one"):  # the marginals are the classifier's p
        dec.c.kind_draw = draw
        drawn = dec.draw_kinds(torch.rand(200_000, 3, generator=g), p.expand(200_000, -1)).mean(0)
        torch.testing.assert_close(drawn, p[0], atol=0.005, rtol=0)
    dec.c.kind_draw = "each"
    _check_condition_kinds(kinds, "arkit58")
    only = REALM(REALMConfig(**kw, react_condition=(ANY_REACTION,), react_shift=8)).decoder  # alone: p_any
    assert only.draw_kinds(torch.tensor([[0.3], [0.7]]), torch.tensor([[0.5], [0.5]])).tolist() == [[1.0], [0.0]]

    # labels: a nod at frame 12 (window 0 with shift 8) is "any" alone; the smile at 40 is smile and "any"
    spec = get_spec("arkit58")
    stats = NormStats(mean=np.full(58, 0.1), std=np.full(58, 0.5), spec="arkit58")
    raw = np.zeros((64, 58))
    for name in ("mouthSmileLeft", "mouthSmileRight"):
        raw[:, spec.names.index(name)] = 0.6 * ease_envelope(64, 40, 7, 15, 10)
    raw[:, spec.channel("rotation.pitch")] = 0.12 * ease_envelope(64, 12, 5, 2, 6)
    task = REALMTask({**kw, "react_condition": kinds, "react_shift": 8},
                     asdict_jsonable(TrainConfig(coarse_loss="energy", mean_rollout=True)), 1)  # fmt: skip
    task.stats = stats
    labels = task.react_labels(torch.from_numpy(stats.apply(raw))[None].float(), 4, kinds)[0]  # (4, 3)
    torch.testing.assert_close(labels, torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0] * 3]))


@pytest.mark.parametrize("extra", [{}, {"latent_dim": 4, "rest_leak": True},
                                   {"latent_dim": 4, "react_condition": ("smile", "concern"), "react_shift": 8},
                                   {"history": 24, "first_window": "guide", "identity_anchor": True},
                                   {"history": 8, "latent_dim": 4, "latent_gate": True}])  # fmt: skip
def test_teacher_forced_windows_are_the_rollout_when_the_history_is_the_models_own(extra):
    """teacher_rollout runs every window at once with the ground truth before it as its history: given
    the model's own rollout as that ground truth, it is the rollout (the same windows, gate values and
    boundary frames); given another listener, window 0 (the bootstrap's) is the same and the later
    windows continue that listener's frames."""
    torch.manual_seed(0)
    model = REALM(REALMConfig(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, audio_context=16,
                              zero_init_heads=False, **extra)).eval()  # fmt: skip
    c, B, T = model.config, 3, 100  # 7 windows, the last one cut
    n = math.ceil(T / c.window)
    audio, f0 = torch.randn(B, T, 20), torch.randn(B, 58)
    z = torch.randn(2 * B, n, c.latent_width) if c.latent_width else None
    kinds = (torch.rand(2 * B, n, len(c.react_condition)) < 0.3).float() if c.react_condition else None
    with torch.no_grad():
        own, aux = model.rollout(audio, frame0=f0, latents=z, samples=2, kinds=kinds)  # (2 B, T, D)
        z1 = None if z is None else z[B:]
        k1 = None if kinds is None else kinds[B:]
        tf, tf_aux = model.teacher_rollout(audio, own[B:], latents=z1, kinds=k1)
        if z is not None:  # two samples, sample-major, each from its own latents (one ground truth: sample 1's)
            both, _ = model.teacher_rollout(audio, own[B:], latents=z, samples=2, kinds=kinds)
            torch.testing.assert_close(both[B:], own[B:], atol=1e-5, rtol=0)
            assert (both[:B, c.window :] - own[:B, c.window :]).abs().amax() > 1e-3  # sample 0 reads sample 1's history
        other = own[B:].roll(1, dims=0)  # another clip's motion as the ground truth
        moved, _ = model.teacher_rollout(audio, torch.cat([own[B:, :1], other[:, 1:]], 1), latents=z1, kinds=k1)
    assert tf.shape == (B, T, 58)
    torch.testing.assert_close(tf, own[B:], atol=1e-5, rtol=0)
    torch.testing.assert_close(tf_aux["alpha"], aux["alpha"][B:], atol=1e-5, rtol=0)
    assert len(tf_aux["bounds"]) == len(aux["bounds"]) == n
    for (h1, w1), (h2, w2) in zip(tf_aux["bounds"], aux["bounds"], strict=True):
        torch.testing.assert_close(h1, h2[B:], atol=1e-5, rtol=0)
        torch.testing.assert_close(w1, w2[B:], atol=1e-5, rtol=0)
    W = c.window
    torch.testing.assert_close(moved[:, :W], own[B:, :W], atol=1e-5, rtol=0)  # the bootstrap's window
    assert (moved[:, W:] - own[B:, W:]).abs().amax() > 0.1
    # window 1 starts from the given listener's last frame before it (the integration's start)
    assert (moved[:, W] - other[:, W - 1]).abs().mean() < (moved[:, W] - own[B:, W - 1]).abs().mean()


def test_teacher_forcing_refuses_windows_that_carry_state():
    kw = dict(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, latent_dim=4)
    audio, gt = torch.randn(1, 32, 20), torch.randn(1, 32, 58)
    offset = REALM(REALMConfig(**kw, latent_branch=True, branch_into="offset"))
    with pytest.raises(ValueError, match="needs rollout"):
        offset.teacher_rollout(audio, gt, latents=torch.randn(1, 2, 4))
    shifted = REALM(REALMConfig(**kw, latent_branch=True, react_shift=8))  # the latent's shift reads the window before
    with pytest.raises(ValueError, match="needs rollout"):
        shifted.teacher_rollout(audio, gt, latents=torch.randn(1, 2, 4))
    cond = REALM(REALMConfig(**kw, react_condition=("smile",), react_shift=8))
    with pytest.raises(ValueError, match="needs each window's kinds"):
        cond.teacher_rollout(audio, gt, latents=torch.randn(1, 2, 5))
