"""The runs under a folder, read for comparing: each run's figures (metrics.json), its settings
(the resolved config.yaml, flattened to `a.b` keys) and its data fingerprint.

Two runs are only ranked against each other when their fingerprints match: the same corpus,
tokenizer, evaluation windows (their length, overlap and rows) and share of the splits scored.
A perplexity on other tokens or other windows is another quantity. A recurrent model that
carries its state through the non-overlapping windows reads the same windows as a
Transformer: they compare, as in pytorch/examples' word_language_model.

A run's settings also hold its group choices (`model` -> `lstm`, from .hydra/hydra.yaml). Where
a choice differs between runs, the keys under it are shown only where a run set them on the
command line: an LSTM and a Transformer differ in every model key, and the family says it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lmx.config.legacy import typed_config
from lmx.config.rules import leaves
from lmx.errors import LmxError
from lmx.runs.naming import group_choices, override_values
from lmx.runs.status import STATUS_FILE, read_job, read_status, shown_status

# Keys that say how or where a run ran, not what it is: never a column, never a group.
ADMIN_KEYS = (
    "hydra.", "sweep.", "name", "data.cache_dir", "data.local_dir", "data.hub_path",
    "data.hub_config", "trainer.resume", "trainer.progress", "trainer.tensorboard",
    "trainer.checkpoint_every_steps", "trainer.log_interval", "trainer.samples",
    "trainer.hparams_all", "device.type", "device.threads", "device.keep_heap",
)  # fmt: skip


def find_runs(root: Path) -> list[Path]:
    """Run dirs under root: a metrics.json, or a .hydra/ folder (a run that died early), less
    the folders of sweep jobs skipped because they had finished in another folder."""
    found = {p.parent for p in root.glob(f"**/{STATUS_FILE}")}
    early = {p.parent for p in root.glob("**/.hydra") if p.is_dir()} - found
    return sorted(found | {d for d in early if read_job(d).get("outcome") != "skipped"})


def overrides(run_dir: Path) -> dict[str, str]:
    """The command-line overrides of the run (hydra.* and sweep.* left out)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    out = override_values(list(OmegaConf.load(path)))
    return {k: v for k, v in out.items() if not k.startswith(("hydra.", "sweep."))}


def choices(run_dir: Path) -> dict[str, str]:
    """The group options the run was composed from: {"model": "lstm", "optim": "sgd", ...}."""
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    return group_choices(OmegaConf.load(path).hydra.runtime.get("choices", {}))


def settings(run_dir: Path) -> dict[str, str]:
    """Every setting of the run as `a.b` -> its value as text: its group choices and the
    resolved config.yaml, or (a run that died before writing it) its overrides."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {**choices(run_dir), **overrides(run_dir)}
    tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    try:  # on today's schema: keys added since a run was written at the value it ran with
        tree = OmegaConf.to_container(typed_config(tree, str(path)), enum_to_str=True)
    except LmxError:
        pass  # a config this lmx cannot type: compare what it says
    return {**choices(run_dir), **{k: _text(v) for k, v in leaves(tree).items()}}


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return "null" if value is None else str(value)


def is_admin(key: str) -> bool:
    return any(key == a or (a.endswith(".") and key.startswith(a)) for a in ADMIN_KEYS)


def sample_key(settings: dict[str, str]) -> str:
    """Equal for two runs that are one sample: the same settings, seed included, wherever they
    ran (a copy, or a resumed run beside its original)."""
    return repr(sorted((k, v) for k, v in settings.items() if not is_admin(k)))


def fingerprint(run: dict[str, Any]) -> str:
    """What a run's perplexities are a measure of: corpus | tokenizer | windows | coverage."""
    s, m = run["settings"], run["metrics"]
    hub = f"{s.get('data.hub_path', '?')}:{s.get('data.hub_config', '?')}"
    source = s.get("data.local_dir") or hub
    tokenizer = _tokenizer(s)
    vocab = m.get("vocab_size")
    windows = m.get("val_eval") or next(
        (h["val_eval"] for h in reversed(m.get("history", [])) if h.get("val_eval")), "?"
    )
    windows = windows.replace("state carried", "no overlap")  # the same windows
    # the split is cut into this many rows: which tokens are scored, and how many start a row
    # without context, depend on it
    rows = s.get("data.eval_batch_size")
    windows += f", {rows} row{'' if str(rows) == '1' else 's'}" if rows else ""
    types = f", {vocab:,} types" if vocab else ""
    return (f"{s.get('data.name', '?')} ({source}) | tokens: {tokenizer}{types}"
            f" | eval: {windows} | {coverage(m)}")  # fmt: skip


def _tokenizer(s: dict[str, str]) -> str:
    """'word/basic_english', with +eos, a vocab cap and a min frequency where they are set."""
    t = {k.rsplit(".", 1)[1]: v for k, v in s.items() if k.startswith("data.tokenizer.")}
    if not t:
        return "?"
    text = f"{t.get('kind', '?')}/{t.get('normalization', '?')}"
    text += "+eos" if t.get("eos") == "True" else ""
    text += f", vocab_size {t['vocab_size']}" if t.get("vocab_size", "null") != "null" else ""
    text += f", min_frequency {t['min_frequency']}" if t.get("min_frequency", "0") != "0" else ""
    return text


def coverage(metrics: dict[str, Any]) -> str:
    """'full', or which split was scored in part ('partial: val 3.2%'); '-' if unknown."""
    parts = []
    for split in ("val", "test"):
        scored, total = metrics.get(f"{split}_tokens_scored"), metrics.get(f"{split}_tokens_total")
        if scored is not None and total:
            parts.append((split, scored, total))
    if not parts:
        return "-"  # written before lmx recorded it, or nothing scored yet
    partial = [f"{split} {100 * a / b:.1f}%" for split, a, b in parts if a != b]
    return "partial: " + ", ".join(partial) if partial else "full"


NOT_SCORED = "not scored yet"  # the fingerprint of runs with no validation to rank them by


def collect(root: Path) -> list[dict[str, Any]]:
    """One dict per run under root, best validation first; runs not scored yet last."""
    rows = []
    for run_dir in find_runs(root):
        metrics = read_status(run_dir)
        row = {
            "run": str(run_dir.relative_to(root)) if run_dir != root else run_dir.name,
            "dir": run_dir,
            "settings": settings(run_dir),
            "metrics": metrics,
            "best_val_ppl": metrics.get("best_val_ppl"),
            "best_val_loss": metrics.get("best_val_loss"),
            "test_ppl": metrics.get("test_ppl"),
            "test_loss": metrics.get("test_loss"),
            "eval": coverage(metrics),
            "epochs": metrics.get("epochs"),
            "steps": metrics.get("steps"),
            "tokens_per_s": metrics.get("train_tokens_per_s"),
            "wall_time_s": metrics.get("wall_time_s"),
            "status": shown_status(run_dir, metrics),
            "error": metrics.get("error", ""),
            "history": metrics.get("history", []),
        }
        row["scored"] = row["best_val_ppl"] is not None
        row["fingerprint"] = fingerprint(row) if row["scored"] else NOT_SCORED
        row["overrides"] = overrides(run_dir)
        rows.append(row)
    return sorted(rows, key=lambda r: (not r["scored"], r["best_val_ppl"] or 0.0))


def varying_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The settings that differ between the runs, less the ones that only say where they ran
    and the keys under a group choice that differs, unless a run set them itself."""
    keys = sorted({k for r in rows for k in r["settings"] if not is_admin(k)})
    # over the runs that have the key: one that died before its config.yaml knows few keys,
    # and its unknowns are no difference
    varying = [k for k in keys if len({r["settings"][k] for r in rows if k in r["settings"]}) > 1]
    chosen = [k for k in varying if "." not in k]  # model, optim, ...: group choices
    typed = {k for r in rows for k in r.get("overrides", {})}
    return [k for k in varying if k in typed or not k.startswith(tuple(f"{c}." for c in chosen))]
