"""The tutorial model: shapes, init, weight tying, and a causal mask that blocks the future."""

from __future__ import annotations

import math

import torch

from lmx.models.transformer import PositionalEncoding, TransformerLM


def tiny(**kw):
    torch.manual_seed(0)
    return TransformerLM(ntoken=40, d_model=16, nhead=2, d_hid=32, nlayers=2, **kw)


def test_output_shape_and_init():
    model = tiny()
    logits = model(torch.randint(0, 40, (3, 9)))
    assert logits.shape == (3, 9, 40)
    assert model.decoder.bias.abs().sum() == 0
    assert model.embedding.weight.abs().max() <= 0.1
    assert model.decoder.weight is not model.embedding.weight


def test_tie_weights_shares_one_matrix():
    model = tiny(tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    n_untied = sum(p.numel() for p in tiny().parameters())
    assert sum(p.numel() for p in model.parameters()) == n_untied - 40 * 16


def test_positional_encoding_formula():
    pe = PositionalEncoding(d_model=6, dropout=0.0).pe
    pos, k = 7, 1
    assert math.isclose(pe[pos, 2 * k].item(), math.sin(pos / 10000 ** (2 * k / 6)), rel_tol=1e-5)
    assert math.isclose(
        pe[pos, 2 * k + 1].item(), math.cos(pos / 10000 ** (2 * k / 6)), rel_tol=1e-5
    )


def test_causal_mask_blocks_the_future():
    model = tiny().eval()
    src = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        base = model(src)
        for t in range(src.size(1) - 1):
            changed = src.clone()
            changed[:, t + 1 :] = (changed[:, t + 1 :] + 1 + torch.arange(12 - t - 1)) % 40
            out = model(changed)
            # positions <= t are unchanged; the first changed position is not (sanity check)
            assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5)
            assert not torch.allclose(out[:, t + 1], base[:, t + 1], atol=1e-5)


def test_causal_mask_also_holds_in_training_mode_gradients():
    # The gradient of position t's logits w.r.t. the embeddings of later positions is zero.
    model = tiny(dropout=0.0).train()
    src = torch.randint(0, 40, (1, 10))
    emb = (model.embedding(src) * math.sqrt(16)).detach().requires_grad_(True)
    x = model.encoder(
        model.pos_encoder(emb),
        mask=torch.nn.Transformer.generate_square_subsequent_mask(10),
        is_causal=True,
    )
    model.decoder(x)[0, 4].sum().backward()
    assert emb.grad[0, 5:].abs().max() == 0
    assert emb.grad[0, :5].abs().max() > 0


def _trains(model: TransformerLM, steps: int = 8) -> list[float]:
    """Losses of a few SGD steps on one fixed batch: they must fall."""
    src, tgt = torch.randint(0, 40, (4, 12)), torch.randint(0, 40, (4, 12))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(steps):
        model.train()
        loss = model(src, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_pre_norm_has_a_final_layernorm_and_trains():
    model = tiny(norm_first=True, dropout=0.0)
    assert isinstance(model.encoder.norm, torch.nn.LayerNorm)
    assert all(layer.norm_first for layer in model.encoder.layers)
    assert tiny().encoder.norm is None  # the tutorial: post-norm, no final norm
    losses = _trains(model)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def test_gelu_is_the_feed_forward_activation_and_trains():
    model = tiny(activation="gelu", dropout=0.0)
    layer = model.encoder.layers[0]
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(layer.activation(x), torch.nn.functional.gelu(x))
    assert not torch.allclose(tiny().encoder.layers[0].activation(x), layer.activation(x))
    losses = _trains(model)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def test_attention_dropout_is_its_own_rate_and_takes_effect():
    src = torch.randint(0, 40, (2, 10))
    model = tiny(dropout=0.0, attn_dropout=0.5).train()
    assert model.encoder.layers[0].self_attn.dropout == 0.5
    assert not torch.equal(model(src), model(src))  # attention weights dropped at random
    still = tiny(dropout=0.0, attn_dropout=0.0).train()
    assert torch.equal(still(src), still(src))
    assert tiny(dropout=0.3).encoder.layers[0].self_attn.dropout == 0.3  # None: same as dropout
    losses = _trains(tiny(dropout=0.0, attn_dropout=0.1))
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
