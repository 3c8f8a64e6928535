"""`lmx generate ckpt=PATH prompt="..." [OPTION=VALUE ...] [KEY=VALUE ...]`: sample
continuations from a trained model, on the best device there is. A fixed seed gives the same
text.

The model reads the prompt once and then each new token: a recurrent model carries its state,
GPT keeps a KV cache. The Transformer re-reads its window of the last data.bptt tokens for
every token (its encoder layers keep no cache).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from lmx.cli import parse_args, run, split_options
from lmx.data.tokenizer import EOS
from lmx.errors import ConfigError
from lmx.models.carried import carries_state, fresh_state

log = logging.getLogger("lmx.generate")

OPTIONS = {
    "ckpt": "a checkpoint file, or a run dir (its checkpoints/best.pt)",
    "prompt": "the text to continue",
    "max_new_tokens": "tokens to add to each sample (default 50)",
    "num_samples": "how many continuations (default 1)",
    "temperature": "0 picks the most likely token every time; higher is more random (default 1)",
    "top_k": "sample among the k most likely tokens only (default 0: all)",
    "top_p": "sample from the fewest tokens whose probabilities sum to p (default 1.0: all)",
    "repetition_penalty": "> 1 makes tokens already in the text less likely (CTRL; default 1)",
    "seed": "the random seed (default 0)",
}
USAGE = (
    "usage: lmx generate ckpt=PATH prompt=TEXT [OPTION=VALUE ...] [KEY=VALUE ...]\n"
    + "\n".join(f"  {k:<20}{v}" for k, v in OPTIONS.items())
    + "\n  KEY=VALUE           a dotted override of the run's saved config, e.g. device.type=cpu"
)


@torch.inference_mode()
def sample(
    model: torch.nn.Module,
    prompt_ids: list[int],
    max_new_tokens: int,
    context: int,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[int]:
    """New token ids after the prompt (drawn with `generator`, or one seeded with `seed`).
    The model sees at most `context` tokens, as in
    training. A model that carries its state (lmx.models.carried) reads the prompt once, then
    each new token, with all before it in its state. One with a KV cache (GPT) does the same
    until the cache holds `context` tokens, then reads the last context / 2 again and goes on:
    it sees between context / 2 and context tokens, never more than it was trained on."""
    generator = generator or torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    ids = list(prompt_ids)
    cached = hasattr(model, "new_cache")
    cache = model.new_cache() if cached else None
    feed = ids[-context:] if cached else ids
    with fresh_state(model):
        for _ in range(max_new_tokens):
            if cached and cache.length + len(feed) > context:
                cache, feed = model.new_cache(), ids[-max(1, context // 2) :]  # slide
            window = feed if (cached or carries_state(model)) else ids[-context:]
            src = torch.tensor([window], device=device)
            out = model(src, cache=cache) if cached else model(src)
            logits = out[0, -1].float().cpu()  # [V]
            if repetition_penalty != 1.0:
                logits = _penalize(logits, ids, repetition_penalty)
            next_id = _pick(logits, temperature, top_k, generator, top_p)
            ids.append(next_id)
            feed = [next_id]
    return ids[len(prompt_ids) :]


def _penalize(logits: torch.Tensor, ids: list[int], penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty: the logit of every token already seen divided by `penalty`
    where positive, multiplied where negative (both make it less likely for penalty > 1)."""
    seen = torch.tensor(sorted(set(ids)))
    values = logits[seen]
    logits = logits.clone()
    logits[seen] = torch.where(values > 0, values / penalty, values * penalty)
    return logits


def _pick(logits: torch.Tensor, temperature: float, top_k: int, generator, top_p: float = 1.0):
    """The next token from logits [V]: the most likely at temperature 0, else a sample from
    the top_k most likely and, within those, the nucleus of probability top_p."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits[logits < kth] = -float("inf")
    probs = logits.softmax(-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs  # mass of the more likely tokens
        sorted_probs[before >= top_p] = 0.0  # outside the nucleus; the most likely stays
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate(
    path: str | Path,
    prompt: str,
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    overrides: list[str] | None = None,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    num_samples: int = 1,
) -> list[str]:
    """`num_samples` continuations of the prompt, each with the prompt before it."""
    from lmx.models.pretrained import load_trained
    from lmx.runtime.device import apply_settings, resolve_device

    at_least_0 = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k}
    bad = [f"{k}={v} must be >= 0" for k, v in at_least_0.items() if not v >= 0]  # nan too
    bad += [] if math.isfinite(temperature) else [f"temperature={temperature} must be finite"]
    bad += [] if 0.0 < top_p <= 1.0 else [f"top_p={top_p} must be in (0, 1]"]
    bad += (
        []
        if 0 < repetition_penalty < math.inf
        else [f"repetition_penalty={repetition_penalty} must be > 0 and finite"]
    )
    bad += [] if num_samples >= 1 else [f"num_samples={num_samples} must be >= 1"]
    idle = ("device.precision", "device.compile")  # sampling runs in fp32, uncompiled
    bad += [f"{o}: generate samples in fp32, uncompiled; this setting would have no effect"
            for o in overrides or [] if o.lstrip("+~").split("=")[0] in idle]  # fmt: skip
    if bad:
        raise ConfigError("; ".join(bad))
    overrides = overrides or []
    trained = load_trained(path, overrides)  # on cpu
    # the best there is, not what it trained on, unless the command line says otherwise
    if not any(o.startswith("device.type=") for o in overrides):
        trained.cfg.device.type = "auto"
    if not any(o.startswith("device.threads=") for o in overrides):
        trained.cfg.device.threads = None  # torch's own: all cores
    device = resolve_device(trained.cfg.device, training=False)
    apply_settings(device, trained.cfg.device)
    trained.model.to(device)
    tok = trained.tokenizer
    encoding = tok.encode(prompt, add_special_tokens=False)  # no <eos> after the prompt
    _warn_unknown(prompt, encoding, tok)
    prompt_ids = encoding.ids
    if not prompt_ids:
        if tok.token_to_id(EOS) is None:
            raise ConfigError("prompt is empty: give the model a few words to continue")
        prompt_ids = [tok.token_to_id(EOS)]  # a line start, for models trained with <eos>
    generator = torch.Generator().manual_seed(seed)
    texts = []
    for _ in range(num_samples):  # one generator: sample i is the same in any count >= i
        new_ids = sample(
            trained.model, prompt_ids, max_new_tokens, trained.cfg.data.bptt, temperature,
            top_k, top_p=top_p, repetition_penalty=repetition_penalty, generator=generator,
        )  # fmt: skip
        texts.append(decode(tok, prompt_ids + new_ids))
    return texts


def decode(tok, ids: list[int]) -> str:
    """Text of token ids as the model wrote them: <unk> kept, each <eos> a line break."""
    text = tok.decode(ids, skip_special_tokens=False)
    return text.replace(f" {EOS} ", "\n").replace(EOS, "\n")


def _warn_unknown(prompt: str, encoding, tok) -> None:
    """Name the prompt's words that the vocabulary lacks: the model reads each as <unk>."""
    unk = tok.token_to_id("<unk>")
    if unk is None:
        return
    words = [prompt[a:b] for i, (a, b) in zip(encoding.ids, encoding.offsets, strict=True)
             if i == unk and prompt[a:b] != "<unk>"]  # fmt: skip
    if words:
        log.warning("prompt words not in the vocabulary, read as <unk>: %s",
                    ", ".join(dict.fromkeys(words)))  # fmt: skip


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="lmx: %(message)s")
    options, overrides = split_options(parse_args(argv, USAGE), OPTIONS, "generate", USAGE)
    missing = [need for need in ("ckpt=PATH", "prompt=TEXT") if need.split("=")[0] not in options]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                          f"required\n{USAGE}")  # fmt: skip
    numbers = {"max_new_tokens": int, "num_samples": int, "top_k": int, "seed": int,
               "temperature": float, "top_p": float, "repetition_penalty": float}  # fmt: skip
    values, bad = {}, []
    for key, text in options.items():
        if key in numbers:
            try:
                values[key] = numbers[key](text)
            except ValueError:
                bad.append(
                    f"{key}={text}: not {'an integer' if numbers[key] is int else 'a number'}"
                )
    if bad:
        raise ConfigError("; ".join(bad))
    texts = generate(options["ckpt"], options["prompt"], overrides=overrides, **values)
    if len(texts) == 1:
        print(texts[0])
        return
    for i, text in enumerate(texts, 1):
        print(f"--- sample {i} of {len(texts)}\n{text}\n")


if __name__ == "__main__":
    run(main)
