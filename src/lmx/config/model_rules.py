"""The rules of each model family's config (ranges, cross-field rules) and of how a family
meets the rest of the run: what it cannot do is refused here with a message that names it."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from lmx.config.schema import MODEL_FAMILIES, Head, Positions, TokenizerKind

Check = Callable[[bool, str], None]  # check(ok, message): the message is a problem unless ok

# Optimizers whose step takes the sparse embedding gradient alongside the dense ones.
_SPARSE_OPTIMIZERS = ("torch.optim.SGD", "torch.optim.Adagrad")
_TARGETS = {schema._target_: name for name, schema in MODEL_FAMILIES.items()}


def family(model: DictConfig) -> str | None:
    """The model=NAME option a model config belongs to (by its target); None: another class."""
    return _TARGETS.get(model.get("_target_"))


def max_len(model: DictConfig) -> int | None:
    """The longest window the model takes; None: no limit (a recurrent model)."""
    return model.get("max_len")


def model_problems(cfg: DictConfig, check: Check) -> None:
    m = cfg.model
    name = family(m)
    if name in ("transformer", "gpt"):
        _attention(m, check)
    if name == "transformer":
        check(
            m.activation in ("relu", "gelu"),
            f"model.activation={m.activation!r} must be 'relu' or 'gelu'",
        )
    elif name == "gpt":
        head = m.d_model // m.nhead if m.nhead >= 1 else 0
        check(
            m.positions != Positions.rope or head % 2 == 0,
            f"model.positions=rope rotates pairs of dimensions, so each head needs an even "
            f"size; model.d_model / model.nhead = {head}",
        )
    elif name == "lstm":
        _lstm(cfg, check)
    if "nlayers" in m:  # every family has these two
        check(m.nlayers >= 1, f"model.nlayers={m.nlayers} must be >= 1")
    if "dropout" in m:
        check(0.0 <= m.dropout < 1.0, f"model.dropout={m.dropout} must be in [0, 1)")
    if m.get("sparse_embedding"):
        _sparse_embedding(cfg, check)
    if m.get("head") == Head.adaptive:
        _adaptive_head(cfg, check)
        check(m.get("fused_loss", True), "model.fused_loss=false has no effect with model.head="
              "adaptive: that head has its own loss and never builds full logits")  # fmt: skip
    elif name is not None and "cutoffs" in m:  # the adaptive head's settings, set for nothing
        defaults = MODEL_FAMILIES[name]()
        for key in ("cutoffs", "div_value", "adaptive_input"):
            value = list(m[key]) if key == "cutoffs" else m[key]
            check(value == getattr(defaults, key), f"model.{key}={value} has no effect with "
                  "model.head=softmax; it sets up model.head=adaptive")  # fmt: skip


def _attention(m: DictConfig, check: Check) -> None:
    check(m.d_model >= 1, f"model.d_model={m.d_model} must be >= 1")
    check(m.nhead >= 1, f"model.nhead={m.nhead} must be >= 1")
    if m.nhead >= 1:
        check(
            m.d_model % m.nhead == 0,
            f"model.d_model={m.d_model} is not divisible by model.nhead={m.nhead}: "
            "each attention head gets d_model / nhead dimensions",
        )
    check(m.d_hid >= 1, f"model.d_hid={m.d_hid} must be >= 1")
    check(
        m.attn_dropout is None or 0.0 <= m.attn_dropout < 1.0,
        f"model.attn_dropout={m.attn_dropout} must be in [0, 1) or null",
    )
    check(m.max_len >= 1, f"model.max_len={m.max_len} must be >= 1")


def _lstm(cfg: DictConfig, check: Check) -> None:
    m = cfg.model
    for key in ("emsize", "nhid"):
        check(m[key] >= 1, f"model.{key}={m[key]} must be >= 1")
    check(
        not m.tie_weights or m.emsize == m.nhid,
        f"model.tie_weights=true needs model.emsize == model.nhid (one matrix serves both); "
        f"got emsize={m.emsize}, nhid={m.nhid}",
    )
    # The carried state makes each window depend on the one before it.
    stride = cfg.get("eval", {}).get("stride")
    check(
        stride is None,
        f"eval.stride={stride} does not apply to model=lstm: it carries its state from "
        "window to window, so each token already sees everything before it; leave "
        "eval.stride null",
    )
    check(
        cfg.trainer.accumulate == 1,
        f"trainer.accumulate={cfg.trainer.accumulate} is not supported with model=lstm yet: "
        "its carried state belongs to whole batch rows; lower data.batch_size instead",
    )


def _sparse_embedding(cfg: DictConfig, check: Check) -> None:
    m = cfg.model
    check(not m.tie_weights, "model.sparse_embedding needs model.tie_weights=false")
    check(
        not m.get("adaptive_input"),
        "model.sparse_embedding does not apply with model.adaptive_input=true: that "
        "embedding is the adaptive head's dense weights",
    )
    check(
        not cfg.device.compile,
        "model.sparse_embedding cannot be compiled (device.compile=true): torch's "
        "inductor does not take sparse gradients",
    )
    target, decay = cfg.optim.get("_target_"), cfg.optim.get("weight_decay", 0)
    check(
        target in _SPARSE_OPTIMIZERS and not decay,
        f"model.sparse_embedding needs an optimizer that takes sparse gradients "
        f"({', '.join(_SPARSE_OPTIMIZERS)}) without weight_decay; got {target} "
        f"with weight_decay={decay}",
    )


def _adaptive_head(cfg: DictConfig, check: Check) -> None:
    m = cfg.model
    check(not m.tie_weights, "model.head=adaptive needs model.tie_weights=false: the adaptive "
          "head has no [vocab, d_model] matrix to share with the embedding")  # fmt: skip
    cutoffs = list(m.cutoffs)
    check(
        bool(cutoffs) and cutoffs == sorted(set(cutoffs)) and cutoffs[0] >= 1,
        f"model.cutoffs={cutoffs} must be increasing ids >= 1 (each one starts a cluster)",
    )
    check(m.div_value >= 1.0, f"model.div_value={m.div_value} must be >= 1")
    check(
        not m.get("adaptive_input") or m.get("emsize", 0) == m.get("nhid", 0),
        f"model.adaptive_input=true reads the head's weights as the embedding, so it needs "
        f"model.emsize == model.nhid; got emsize={m.get('emsize')}, nhid={m.get('nhid')}",
    )
    hidden = m.get("d_model", m.get("nhid"))  # what the head reads
    smallest = int(hidden // m.div_value ** len(cutoffs)) if m.div_value >= 1.0 else 1
    check(smallest >= 1, f"model.div_value={m.div_value} leaves the last of {len(cutoffs)} "
          f"clusters a projection of size {hidden} // {m.div_value}^{len(cutoffs)} = 0; lower "
          "model.div_value or use fewer model.cutoffs")  # fmt: skip
    check(
        cfg.data.tokenizer.kind == TokenizerKind.word,
        "model.head=adaptive puts the first model.cutoffs ids in its head, so it needs ids in "
        "frequency order, which only the word-level tokenizers give (BPE ids are in merge "
        "order); use a word-level data/tokenizer or model.head=softmax",
    )
