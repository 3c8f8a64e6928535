"""`python -m lmx.generate ckpt=PATH prompt="..." [max_new_tokens=50] [temperature=1.0] [top_k=0]
[seed=0]`: sample a continuation from a trained model. A fixed seed gives the same text."""

from __future__ import annotations

from pathlib import Path

import torch

from lmx.cli import fail, parse_args, run
from lmx.data.tokenizer import EOS
from lmx.errors import ConfigError

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
    """New token ids after the prompt; the model sees at most `context` tokens, as in training."""
    generator = torch.Generator().manual_seed(seed)
    ids = list(prompt_ids)
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([ids[-context:]]))[0, -1].float()  # [V]
        if temperature == 0:
            next_id = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k > 0:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits[logits < kth] = -float("inf")
            next_id = int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
        ids.append(next_id)
    return ids[len(prompt_ids) :]


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
