"""realm.models.layers: REALM's transformer layers as functions, and dropout with NumPy's masks."""

import torch
from torch import nn

from realm.models.layers import decoder_layer, dropout, encoder_layer, keep_mask
from realm.models.realm import REALM, REALMConfig
from realm.threads import cpu_attention


def test_keep_masks_keep_one_minus_p_scaled_and_repeat_with_torch_s_seed():
    torch.manual_seed(3)
    m = keep_mask((400, 500), 0.1)
    assert m.dtype == torch.float32 and m.shape == (400, 500)
    kept = m > 0
    assert abs(float(kept.float().mean()) - 0.9) < 0.003  # 200,000 draws: 3 std = 0.002
    assert torch.allclose(m[kept], torch.tensor(65536 / (65536 - 6554)))  # p' = 6554 / 65536
    assert abs(float(m.mean()) - 1.0) < 0.004  # expectation kept
    torch.manual_seed(3)
    assert torch.equal(keep_mask((400, 500), 0.1), m)  # torch's seed decides the mask
    assert not torch.equal(keep_mask((400, 500), 0.1), m)  # and the next draw differs
    rows = m.reshape(-1, 100).mean(1)  # no structure: chunks of the mask look alike
    assert float(rows.std()) < 0.05


def test_a_bfloat16_keep_mask_is_the_float32_mask_rounded_for_each_p():
    """bf16-mixed training draws its masks as bfloat16 bit patterns: the same draws, the same values
    as converting the float32 mask (so a bf16 run's dropout is what it was before the shortcut)."""
    for p in (0.1, 0.25, 0.5, 1 / 3):
        torch.manual_seed(5)
        m32 = keep_mask((64, 16, 512), p)
        torch.manual_seed(5)
        m16 = keep_mask((64, 16, 512), p, torch.bfloat16)
        assert m16.dtype == torch.bfloat16 and m16.shape == m32.shape
        assert torch.equal(m16, m32.to(torch.bfloat16)), p
        assert set(m16.float().unique().tolist()) == {0.0, float(m32.max().to(torch.bfloat16))}


def test_dropout_gradient_is_the_mask_and_eval_is_identity():
    x = torch.randn(8, 16, 32, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x, 0.25)
    y.backward(torch.ones_like(y))
    dropped = y.detach() == 0
    assert 0.15 < float(dropped.float().mean()) < 0.35
    torch.testing.assert_close(x.grad, torch.where(dropped, 0.0, 1 / 0.75), atol=1e-4, rtol=0)
    assert dropout(x, 0.25, training=False) is x and dropout(x, 0.0) is x
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dropout(x.detach().bfloat16(), 0.1).dtype == torch.bfloat16  # no promotion to float32


def test_layer_functions_are_the_modules_maths_with_and_without_dropout():
    torch.manual_seed(0)
    dec = nn.TransformerDecoderLayer(32, 4, 64, 0.1, activation="gelu", batch_first=True)
    enc = nn.TransformerEncoderLayer(32, 4, 64, 0.1, activation="gelu", batch_first=True)
    x, mem = torch.randn(3, 16, 32), torch.randn(3, 24, 32)
    causal = torch.triu(torch.full((16, 16), float("-inf")), diagonal=1)
    bias = torch.randn(4, 16, 24)
    dec.eval(), enc.eval()
    torch.set_grad_enabled(False)
    ref = dec(x, mem, tgt_mask=causal, memory_mask=bias.repeat(3, 1, 1))
    torch.testing.assert_close(decoder_layer(dec, x, mem, causal, bias), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoder_layer(enc, x), enc(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoder_layer(enc, x, keep=5), enc(x)[:, -5:], atol=1e-5, rtol=1e-5)
    weights = []
    decoder_layer(dec, x, mem, causal, bias, cross_weights=weights)
    assert weights[0].shape == (3, 4, 16, 24)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(3, 4, 16))
    dec.train()  # dropout: a different output each call, the same mean
    torch.manual_seed(1)
    outs = torch.stack([decoder_layer(dec, x, mem, causal, bias) for _ in range(200)])
    assert not torch.allclose(outs[0], outs[1])
    assert float((outs.mean(0) - ref).abs().mean()) < 0.1 * float(ref.abs().mean())
    torch.set_grad_enabled(True)


def _rollout_grads(fast: bool, dropout_p: float, seed: int = 0):
    torch.manual_seed(0)
    m = REALM(REALMConfig(spec="arkit58", audio_dim=20, d_model=32, ff_dim=64, dropout=dropout_p, zero_init_heads=False,
                          audio_context=8, latent_dim=4, fast_train=fast)).train()  # fmt: skip
    audio, f0, z = torch.randn(2, 48, 20), torch.randn(2, 58), torch.randn(2, 3, 4)
    torch.manual_seed(seed)
    with cpu_attention("cpu"):
        motion, _ = m.rollout(audio, f0, latents=z)
    motion.pow(2).mean().backward()
    return motion.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def test_training_through_the_layer_functions_is_the_modules_maths():
    """fast_train (the default) and the nn modules (fast_train=False): the same rollout and gradients
    without dropout; with dropout, seeded runs repeat and differ from the same run unseeded."""
    fast, slow = _rollout_grads(True, 0.0), _rollout_grads(False, 0.0)
    torch.testing.assert_close(fast[0], slow[0], atol=1e-5, rtol=1e-5)
    assert fast[1].keys() == slow[1].keys() and len(fast[1]) > 100
    for name, g in slow[1].items():
        torch.testing.assert_close(fast[1][name], g, atol=1e-6, rtol=1e-4, msg=name)
    a, b, c = _rollout_grads(True, 0.1), _rollout_grads(True, 0.1), _rollout_grads(True, 0.1, seed=1)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    assert not torch.allclose(a[0], fast[0])  # dropout acts
