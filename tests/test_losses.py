import math

import pytest
import torch
import torch.nn.functional as F

from lmx.models import fused_loss as losses
from lmx.models.fused_loss import linear_cross_entropy
from lmx.models.transformer import TransformerLM


def _inputs(n=150, d=8, v=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, requires_grad=True)
    weight = torch.randn(v, d, generator=g, requires_grad=True)
    bias = torch.randn(v, generator=g, requires_grad=True)
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, bias, targets


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_cross_entropy_of_linear_in_fp32(reduction, monkeypatch):
    monkeypatch.setattr(losses, "CHUNK_ROWS", 16)  # several chunks and a ragged last one
    h, w, b, t = _inputs()
    ours = linear_cross_entropy(h, w, b, t, reduction)
    ref = F.cross_entropy(F.linear(h, w, b), t, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for g_ours, g_ref in zip(_grads(ours, h, w, b), _grads(ref, h, w, b), strict=True):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_a_scaled_loss_gets_scaled_gradients(reduction):
    # The forward folds 1/N (mean) into its gradients; any other factor (a loss scaler's,
    # an accumulation's) must still reach them.
    h, w, b, t = _inputs()
    ours = linear_cross_entropy(h, w, b, t, reduction) * 3.0
    ref = F.cross_entropy(F.linear(h, w, b), t, reduction=reduction) * 3.0
    for g_ours, g_ref in zip(_grads(ours, h, w, b), _grads(ref, h, w, b), strict=True):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_stays_close_to_fp32():
    h, w, b, t = _inputs(n=64, d=32, v=300)
    ref = F.cross_entropy(F.linear(h, w, b), t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(h, w, b, t)
    assert ours.dtype == torch.float32
    assert abs(ours.item() - ref.item()) / ref.item() < 2e-2
    g_ours, g_ref = _grads(ours, h)[0], _grads(ref, h)[0]
    assert g_ours.dtype == h.dtype
    assert torch.nn.functional.cosine_similarity(g_ours.flatten(), g_ref.flatten(), dim=0) > 0.99


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                          reason="needs a CUDA GPU"))],
)  # fmt: skip
def test_fp16_weight_gradient_summed_over_many_rows_does_not_overflow(device, monkeypatch):
    # In fp16 the forward's weight gradient is not folded by 1/N: one product over 2,048 rows
    # of hidden 40 all aiming at token 0 sums to about -80,000 in its column, past fp16's
    # 65,504. An inf there is no loss-scale overflow, so the gradient must stay finite.
    monkeypatch.setattr(losses, "PLAIN_LOGITS_BYTES", 0)  # the chunked loss on a GPU too
    h, w, b, t = (x.detach().to(device) for x in _inputs(n=2048, d=8, v=50))
    h = torch.full_like(h, 40.0).requires_grad_()
    w, b = (w * 0.01).requires_grad_(), b.requires_grad_()
    t = torch.zeros_like(t)
    with torch.autocast(device, dtype=torch.float16):
        ours = linear_cross_entropy(h, w, b, t)
    ref = F.cross_entropy(F.linear(h, w, b), t)
    g_ours, g_ref = _grads(ours * 1024.0, w)[0], _grads(ref * 1024.0, w)[0]  # a loss scale
    assert g_ours.dtype == torch.float32 and torch.isfinite(g_ours).all()
    torch.testing.assert_close(g_ours, g_ref, rtol=2e-2, atol=1e-2)


def test_per_token_losses_without_grad():
    h, w, b, t = _inputs(n=12)
    with torch.no_grad():
        ours = linear_cross_entropy(h.view(3, 4, -1), w, b, t.view(3, 4), reduction="none")
    ref = F.cross_entropy(F.linear(h, w, b), t, reduction="none").view(3, 4)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("no_grad", [torch.inference_mode, torch.no_grad])
def test_evaluation_does_no_gradient_work(no_grad, monkeypatch):
    # Evaluation runs with real parameters, which require grad, under inference_mode: only the
    # forward matmul and a log-softmax may run, not the softmax and the two gradient matmuls.
    from torch.utils.flop_counter import FlopCounterMode

    model = TransformerLM(60, d_model=16, nhead=2, d_hid=16, nlayers=1)
    assert all(p.requires_grad for p in model.parameters())
    hidden = torch.randn(40, 16)
    targets = torch.randint(0, 60, (40,))

    def no_softmax(*args, **kwargs):
        raise AssertionError("the gradient path ran in evaluation")

    monkeypatch.setattr(losses, "_token_losses", no_softmax)
    with no_grad(), FlopCounterMode(display=False) as flops:
        loss = linear_cross_entropy(hidden, model.decoder.weight, model.decoder.bias, targets)
    assert flops.get_total_flops() == 2 * 40 * 16 * 60  # one [N, D] x [D, V] matmul
    ref = F.cross_entropy(F.linear(hidden, model.decoder.weight, model.decoder.bias), targets)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_training_after_inference_mode_eval():
    # The logits scratch buffer outlives a call: one made under inference_mode (eval) must
    # still serve training, and the other way round.
    h, w, b, t = _inputs()
    with torch.inference_mode():
        evaluated = linear_cross_entropy(h, w, b, t)
    trained = linear_cross_entropy(h, w, b, t)
    trained.backward()
    with torch.inference_mode():
        again = linear_cross_entropy(h, w, b, t)
    torch.testing.assert_close(evaluated, trained.detach())
    torch.testing.assert_close(again, trained.detach())
    assert w.grad is not None


def test_a_target_with_underflowing_probability_keeps_its_exact_loss_and_gradient():
    # Training path: p(target) = e^-200 underflows fp32's softmax to 0, so -log p would be inf;
    # that row's loss comes from its largest probability instead. The second row's target is
    # likely and keeps -log p(target).
    hidden = torch.tensor([[1.0], [0.0]], requires_grad=True)
    weight = torch.tensor([[200.0], [0.0]], requires_grad=True)  # logits [200, 0] and [0, 0]
    losses = linear_cross_entropy(hidden, weight, None, torch.tensor([1, 0]), reduction="none")
    torch.testing.assert_close(losses.detach(), torch.tensor([200.0, math.log(2.0)]))
    losses.sum().backward()
    # d loss / d logits = softmax - one_hot: [1, -1] and [-0.5, 0.5]
    torch.testing.assert_close(hidden.grad, torch.tensor([[200.0], [-100.0]]))
    torch.testing.assert_close(weight.grad, torch.tensor([[1.0], [-1.0]]))


def test_weighted_token_losses_are_refused_rather_than_wrong():
    h, w, b, t = _inputs(n=4)
    per_token = linear_cross_entropy(h, w, b, t, reduction="none")
    with pytest.raises(NotImplementedError, match="sum or mean"):
        (per_token * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()


def test_fused_loss_gives_the_model_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = TransformerLM(60, d_model=16, nhead=2, d_hid=16, nlayers=1, tie_weights=True).eval()
    src, tgt = torch.randint(0, 60, (2, 7)), torch.randint(0, 60, (2, 7))
    model.fused_loss = True
    fused = model(src, tgt)
    g_fused = _grads(fused, *model.parameters())
    model.fused_loss = False
    plain = model(src, tgt)
    g_plain = _grads(plain, *model.parameters())
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    for a, c in zip(g_fused, g_plain, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)


def test_a_second_backward_is_refused_rather_than_scaled_twice():
    # The backward scales the saved gradients in place, so a retained graph cannot run twice.
    h, w, b, t = _inputs(n=8)
    loss = linear_cross_entropy(h, w, b, t)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backpropagated twice"):
        loss.backward()


def test_nan_token_weights_give_nan_gradients_not_an_error():
    h, w, b, t = _inputs(n=4)
    per_token = linear_cross_entropy(h, w, b, t, reduction="none")
    (per_token * torch.tensor([1.0, float("nan"), 1.0, 1.0])).sum().backward()
    assert torch.isnan(w.grad).all()


@pytest.mark.parametrize("head, fused", [("softmax", True), ("softmax", False), ("adaptive", True)])
def test_every_head_reduces_its_token_losses_the_same_way(head, fused):
    from lmx.models.head import decode, make_decoder

    torch.manual_seed(0)
    decoder = make_decoder(16, 50, head, cutoffs=[10, 30], div_value=2.0)
    x, targets = torch.randn(2, 5, 16), torch.randint(0, 50, (2, 5))
    each = decode(x, decoder, targets, "none", fused)
    assert each.shape == (2, 5)
    torch.testing.assert_close(decode(x, decoder, targets, "sum", fused), each.sum())
    torch.testing.assert_close(decode(x, decoder, targets, "mean", fused), each.mean())
    with pytest.raises(ValueError, match="reduction"):
        decode(x, decoder, targets, "max", fused)
