"""`python -m lmx.generate ckpt=PATH prompt="..." [max_new_tokens=50] [temperature=1.0] [top_k=0]
[seed=0]`: sample a continuation from a trained model. A fixed seed gives the same text."""

from __future__ import annotations

from pathlib import Path

import torch

from lmx.cli import fail, parse_args, run
from lmx.data.tokenizer import EOS
from lmx.errors import ConfigError
from lmx.models.carried import carries_state, fresh_state

USAGE = """usage: python -m lmx.generate ckpt=PATH prompt=TEXT [max_new_tokens=50] [temperature=1.0]
                        [top_k=0] [seed=0] [KEY=VALUE ...]
  ckpt         a checkpoint file, or a run dir (its checkpoints/best.pt)
  temperature  0 picks the most likely token every time; higher is more random
  top_k        sample among the k most likely tokens only (0: all)"""


@torch.inference_mode()
def sample(
    model: torch.nn.Module,
    prompt_ids: list[int],
    max_new_tokens: int,
    context: int,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
) -> list[int]:
    """New token ids after the prompt. The model sees at most `context` tokens, as in
    training; a model that carries its state (lmx.models.carried) reads the prompt once, then
    each new token, with all before it in its state."""
    generator = torch.Generator().manual_seed(seed)
    ids = list(prompt_ids)
    stateful, feed = carries_state(model), ids
    with fresh_state(model):
        for _ in range(max_new_tokens):
            window = feed if stateful else ids[-context:]
            logits = model(torch.tensor([window]))[0, -1].float()  # [V]
            next_id = _pick(logits, temperature, top_k, generator)
            ids.append(next_id)
            feed = [next_id]
    return ids[len(prompt_ids) :]


def _pick(logits: torch.Tensor, temperature: float, top_k: int, generator) -> int:
    """The next token from logits [V]: the most likely at temperature 0, else a sample."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits[logits < kth] = -float("inf")
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def generate(
    path: str | Path,
    prompt: str,
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    overrides: list[str] | None = None,
) -> str:
    from lmx.models.pretrained import load_trained

    if max_new_tokens < 0 or temperature < 0 or top_k < 0:
        raise ConfigError("max_new_tokens, temperature and top_k must be >= 0")
    trained = load_trained(path, overrides)
    tok = trained.tokenizer
    prompt_ids = tok.encode(prompt, add_special_tokens=False).ids  # no <eos> after the prompt
    if not prompt_ids:
        if tok.token_to_id(EOS) is None:
            raise ConfigError("prompt is empty: give the model a few words to continue")
        prompt_ids = [tok.token_to_id(EOS)]  # a line start, for models trained with <eos>
    new_ids = sample(
        trained.model, prompt_ids, max_new_tokens, trained.cfg.data.bptt, temperature, top_k, seed
    )
    text = tok.decode(prompt_ids + new_ids, skip_special_tokens=False)
    return text.replace(f" {EOS} ", "\n").replace(EOS, "\n")


def main(argv: list[str]) -> None:
    args = parse_args(argv, USAGE)
    if "ckpt" not in args or "prompt" not in args:
        fail(ConfigError(f"ckpt=PATH and prompt=TEXT are required\n{USAGE}"))
    ckpt, prompt = args.pop("ckpt"), args.pop("prompt")
    try:
        options = dict(
            max_new_tokens=int(args.pop("max_new_tokens", 50)),
            temperature=float(args.pop("temperature", 1.0)),
            top_k=int(args.pop("top_k", 0)),
            seed=int(args.pop("seed", 0)),
        )
    except ValueError as err:
        fail(ConfigError(f"bad number: {err}"))
    print(generate(ckpt, prompt, overrides=[f"{k}={v}" for k, v in args.items()], **options))


if __name__ == "__main__":
    run(main)
