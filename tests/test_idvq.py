"""Identity-disentangled VQ-VAE (realm.models.idvq): IN strips style, AdaIN restores the reference's.

Synthetic data: 4 "identities", each a per-channel offset (N(0, 1)) and scale (exp U(-0.5, 0.5))
applied to shared content (4 latent smoothed random walks + sinusoids, mixed into the 58 arkit58
channels by a fixed random matrix). Tiny models (width 32), 250 Adam steps each, 1 thread.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from realm.models.idvq import IDVQ, IDVQConfig, channel_stats

torch.set_num_threads(1)

D = 58
TINY = dict(width=32, depth=2, codes=64, code_dim=16, id_width=32, id_dim=32)
STEPS = 250


def _smooth(x: torch.Tensor, k: int = 15) -> torch.Tensor:  # (n, T, R) moving average over time
    n, T, R = x.shape
    w = torch.ones(1, 1, k) / k
    return F.conv1d(x.transpose(1, 2).reshape(-1, 1, T), w, padding=k // 2).reshape(n, R, T).transpose(1, 2)


def make_data(K=4, per=16, T=64, R=4, seed=0):
    """clips (K * per, T, D), identity ids (K * per,)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(R, D, generator=g) / R**0.5
    off = torch.randn(K, 1, D, generator=g)
    scale = torch.exp(torch.empty(K, 1, D).uniform_(-0.5, 0.5, generator=g))
    n = K * per
    walk = _smooth(_smooth(torch.randn(n, T, R, generator=g).cumsum(1)))
    walk = walk / walk.std(1, keepdim=True)
    t = torch.arange(T)[None, :, None].float()
    burst = torch.sin(
        (0.1 + 0.2 * torch.rand(n, 1, R, generator=g)) * t + 6.3 * torch.rand(n, 1, R, generator=g)
    )
    content = (0.5 * walk + burst) @ mix
    content = content - content.mean(1, keepdim=True)
    ids = torch.arange(K).repeat_interleave(per)
    return content * scale[ids] + off[ids], ids


def fit_tiny(
    model: IDVQ,
    clips: torch.Tensor,
    steps: int = 200,
    lr: float = 2e-3,
    seed: int = 0,
    ids: torch.Tensor | None = None,
    batch: int = 16,
) -> list[float]:
    """Plain Adam loop on clips (N, T, D) (normalised). With ``ids`` (N,) each clip's reference is a random
    clip of the same identity (itself only when it is the only one), else the clip itself. Returns the losses."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the quantiser's dead-code reset draws from the global generator
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    N = len(clips)
    groups = None
    if ids is not None:
        groups = {int(k): (ids == k).nonzero()[:, 0] for k in ids.unique()}
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(N, (min(batch, N),), generator=g)
        ref = None
        if groups is not None:
            pick = []
            for i in idx.tolist():
                same = groups[int(ids[i])]
                others = same[same != i] if len(same) > 1 else same
                pick.append(int(others[torch.randint(len(others), (1,), generator=g)]))
            ref = clips[pick]
        _, out = model(clips[idx], ref)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    model.eval()
    return losses


@pytest.fixture(scope="module")
def data():
    return make_data()


def _train(data, **kw) -> IDVQ:
    x, ids = data
    torch.manual_seed(0)
    m = IDVQ(IDVQConfig(**TINY, **kw))
    losses = fit_tiny(m, x, steps=STEPS, lr=3e-3, ids=ids, seed=0)
    assert losses[-1] < 0.5 * losses[0]
    return m


@pytest.fixture(scope="module")
def trained(data):
    return _train(data)


def _restyle_stats(m: IDVQ, data):
    """Restyle 4 clips of identity 0 with 4 references of identity 1 -> (output, A, B) stats."""
    x, ids = data
    A, B = x[ids == 0][:4], x[ids == 1][4:8]
    with torch.no_grad():
        out = m.restyle(A, B)
    assert out.shape == A.shape
    return channel_stats(out), channel_stats(A), channel_stats(B)


def _restyled(x: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.exp(torch.empty(1, 1, D).uniform_(-0.7, 0.7, generator=g))  # positive per-channel scale
    b = torch.randn(1, 1, D, generator=g)
    return a * x + b


# ---------------------------------------------------------------- (1) IN removes per-clip style


@pytest.mark.parametrize("config", [IDVQConfig(**TINY), IDVQConfig()], ids=["tiny", "defaults"])
def test_in_removes_style_untrained(config, data):
    torch.manual_seed(1)
    m = IDVQ(config).eval()
    x = data[0][:3]
    with torch.no_grad():
        for seed in range(3):
            assert torch.equal(m.encode(x), m.encode(_restyled(x, seed)))


def test_in_removes_style_trained(trained, data):
    x = data[0][::8]  # 8 clips, every identity
    with torch.no_grad():
        tok = trained.encode(x)
        assert tok.unique().numel() > 1  # not a collapsed codebook
        for seed in range(3):
            assert torch.equal(tok, trained.encode(_restyled(x, seed)))


def test_plain_vq_keeps_style(data):
    """The ablation (no IN): an offset changes the tokens."""
    torch.manual_seed(1)
    m = IDVQ(IDVQConfig(**TINY, use_in_adain=False)).eval()
    x = data[0][:3]
    with torch.no_grad():
        assert not torch.equal(m.encode(x), m.encode(x + 3.0))


# ---------------------------------------------------------------- (2) AdaIN restores the reference's stats

# Tolerances (normalised units), per restyled clip: channel-averaged |mean(out) - mean(ref)| < 0.15 and
# channel-median std(out) / std(ref) in [0.7, 1.4]; identities differ by ~1.1 in channel-averaged mean.
MEAN_TOL, RATIO = 0.15, (0.7, 1.4)


def test_adain_restores_reference_stats(trained, data):
    (mo, so), (ma, _), (mb, sb) = _restyle_stats(trained, data)
    mean_diff = (mo - mb).abs().mean(-1)[:, 0]  # (4,)
    ratio = (so / sb)[:, 0].median(-1).values  # (4,)
    assert (mean_diff < MEAN_TOL).all(), mean_diff
    assert ((ratio > RATIO[0]) & (ratio < RATIO[1])).all(), ratio
    assert (mo - ma).abs().mean() > 0.5  # it really left A's statistics


def test_learned_adain_alone_restores_stats(data):
    """Without re-applying the reference's statistics at the output, the AdaIN layers learn it
    (std tolerance a little wider: [0.6, 1.5])."""
    m = _train(data, ref_stats=False)
    (mo, so), _, (mb, sb) = _restyle_stats(m, data)
    assert ((mo - mb).abs().mean(-1) < MEAN_TOL).all()
    ratio = (so / sb)[:, 0].median(-1).values
    assert ((ratio > 0.6) & (ratio < 1.5)).all(), ratio


def test_plain_vq_keeps_source_stats(trained, data):
    m = _train(data, use_in_adain=False)
    (mo, _), (ma, _), (mb, _) = _restyle_stats(m, data)
    to_b = (mo - mb).abs().mean(-1)[:, 0]
    to_a = (mo - ma).abs().mean(-1)[:, 0]
    assert (to_b > 0.5).all() and (to_a < to_b).all(), (to_a, to_b)
    (mo_ad, _), _, _ = _restyle_stats(trained, data)
    assert to_b.mean() > 5 * (mo_ad - mb).abs().mean()


# ---------------------------------------------------------------- (3) shapes


@pytest.mark.parametrize("T", [61, 64, 70])
def test_shapes(T):
    torch.manual_seed(0)
    m = IDVQ(IDVQConfig(**TINY)).eval()
    x, ref = torch.randn(2, T, D), torch.randn(2, 60, D)
    n = -(-T // 8)
    with torch.no_grad():
        tok = m.encode(x)
        assert tok.shape == (2, n) and tok.dtype == torch.long
        assert m.decode(tok, ref).shape == (2, 8 * n, D)  # padded length
        assert m.decode(tok, ref, length=T).shape == (2, T, D)
        assert m.decode(tok, ref[:1]).shape == (2, 8 * n, D)  # one reference for the batch
        assert m.restyle(x, ref).shape == (2, T, D)
    m.train()
    recon, losses = m(x)
    assert recon.shape == (2, T, D)
    assert set(losses) >= {"loss", "recon", "vel", "commit", "codes_used"}
    losses["loss"].backward()


def test_the_decoder_reads_copies_of_the_end_tokens_beyond_each_end():
    """edge_tokens e: decoding tokens is decoding [first] * e + tokens + [last] * e with zero padding and
    cutting the e tokens' frames at each end; so a clip of one repeated token decodes to the frames
    that token gives in the middle of a long run of itself (no dip at the start), and e = 0 is the old decoding."""
    torch.manual_seed(0)
    m = IDVQ(IDVQConfig(**TINY)).eval()
    plain = IDVQ(IDVQConfig(**{**TINY, "edge_tokens": 0})).eval()
    plain.load_state_dict(m.state_dict())
    assert m.config.edge_tokens == 2
    ref, tok = torch.randn(1, 60, D), torch.randint(0, TINY["codes"], (1, 5))
    with torch.no_grad():
        padded = torch.cat([tok[:, :1].repeat(1, 2), tok, tok[:, -1:].repeat(1, 2)], 1)
        torch.testing.assert_close(m.decode(tok, ref), plain.decode(padded, ref)[:, 16:56], atol=1e-5, rtol=0)
        run = torch.full((1, 4), 7)
        first, middle = m.decode(run, ref)[0, :8], plain.decode(torch.full((1, 40), 7), ref)[0, 160:168]
        edge, zero = (first - middle).abs().mean(), (plain.decode(run, ref)[0, :8] - middle).abs().mean()
        assert edge < 0.7 * zero, (edge, zero)

def test_the_reference_std_is_floored_as_the_input_instance_norm_is():
    """ref_stats de-standardises with max(std_t ref, in_floor), the inverse of the input's instance norm:
    a reference channel that does not move (a listener showing no concern in those seconds) scales the
    decoded content by the floor instead of erasing it (and a decoder trained on such references need
    not output huge values to show one); channels whose std is above the floor are as before."""
    torch.manual_seed(0)
    m = IDVQ(IDVQConfig(**TINY, in_floor=0.5)).eval()
    raw = IDVQ(IDVQConfig(**TINY, in_floor=0.5, ref_stats=False)).eval()
    raw.load_state_dict(m.state_dict())
    ref, tok = torch.randn(1, 90, D), torch.randint(0, TINY["codes"], (1, 6))
    ref[..., 0] = 0.3  # a constant channel
    ref[..., 1] = 0.1 * ref[..., 1]  # moves, below the floor
    ref[..., 2] = 3.0 * ref[..., 2]  # above it
    with torch.no_grad():
        out, y = m.decode(tok, ref), raw.decode(tok, ref)
    assert y[0, :, 0].std() > 0.01  # there is content to show
    torch.testing.assert_close(out[..., 0], 0.3 + 0.5 * y[..., 0])
    torch.testing.assert_close(out[..., 1], ref[..., 1].mean() + 0.5 * y[..., 1])
    torch.testing.assert_close(out[..., 2], ref[..., 2].mean() + ref[..., 2].std(unbiased=False) * y[..., 2])


def test_bad_inputs():
    m = IDVQ(IDVQConfig(**TINY)).eval()
    with pytest.raises(ValueError, match="60 frames"):
        m.restyle(torch.randn(1, 64, D), torch.randn(1, 59, D))
    with pytest.raises(ValueError, match="2 tokens"):
        m.restyle(torch.randn(1, 8, D), torch.randn(1, 60, D))
    with pytest.raises(ValueError, match=r"\(B, T, 58\)"):
        m.encode(torch.randn(1, 64, 57))
    plain = IDVQ(IDVQConfig(**TINY, use_in_adain=False)).eval()
    assert plain.decode(torch.zeros(1, 1, dtype=torch.long)).shape == (1, 8, D)  # no reference needed


# ---------------------------------------------------------------- (4) dead-code reset


def test_dead_code_reset_revives_codes(data):
    torch.manual_seed(0)
    m = IDVQ(IDVQConfig(**TINY)).eval()
    x = data[0][:16]
    q = m.quantizer
    with torch.no_grad():
        z = m.encode_z(x).reshape(-1, q.codebook.shape[1])
        q.codebook.fill_(1e3)  # every code far away but code 0: a collapsed codebook
        q.codebook[0] = z.mean(0)
        q.code_sum.copy_(q.codebook)
        q.code_count.fill_(1.0)
        before = m.encode(x).unique().numel()
        m.train()
        m(x)  # one EMA update: codes nobody chose fall below count 1 and are reset to encoder outputs
        m.eval()
        after = m.encode(x).unique().numel()
    assert before == 1
    assert after > 10
