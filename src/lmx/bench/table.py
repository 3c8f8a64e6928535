"""The bench's printed table, from a result dict (also a saved bench.json): torch-free."""

from __future__ import annotations

from lmx.bench.peak import ISA_FLAGS
from lmx.bench.settings import PRECISION, SETTINGS
from lmx.stats import compare_settings


def table(r: dict) -> str:
    base = r["tutorial_loop"]["train_tokens_per_s"]
    fp32 = r["lmx_fp32"]
    steps, k = r["steps"], r["avg_steps"]
    averaged = f"steps {steps - k + 1}-{steps}" if k > 1 else f"step {steps}"
    averaged = (f"valid ppl, models after {averaged}, first {r['avg_batches']} batches" if k
                else "valid ppl, averaged models (none: avg_steps=0)")  # fmt: skip
    rows = [
        "| setting | train tokens/s | vs tutorial | eval tokens/s | GFLOP/s (train) | MFU "
        f"| valid ppl, model after {steps} steps | vs lmx fp32 "
        f"| {averaged} "
        "| vs lmx fp32 (± standard error) | peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    seeds = " / ".join(str(x) for x in r["seeds"])
    per_seed = [f"per seed ({seeds}):"]
    for name in SETTINGS:
        s = r[name]
        if k:
            ratio = s["iterate_val_ppl"] / fp32["iterate_val_ppl"]
            averaged_ppl = f"{s['iterate_val_ppl']:,.2f} | {100 * (ratio - 1):+.1f}%"
            if len(r["seeds"]) > 1 and name != "lmx_fp32":
                c = compare_settings(fp32["iterate_val_losses"], s["iterate_val_losses"])
                averaged_ppl += f" ± {c['se_pct']:.1f}%"
        else:
            averaged_ppl = "- | -"
        rows.append(
            f"| {name} | {s['train_tokens_per_s']:,.0f} | {s['train_tokens_per_s'] / base:.2f}x "
            f"| {s['eval_tokens_per_s']:,.0f} "
            f"| {s['train_tokens_per_s'] * s['flops_per_token'] / 1e9:,.1f} | {_mfu(r, name)} "
            f"| {s['val_ppl']:,.2f} | {100 * (s['val_ppl'] / fp32['val_ppl'] - 1):+.1f}% "
            f"| {averaged_ppl} | {s['peak_rss_mb']:,.0f} |"
        )
        one = " / ".join(f"{x:,.1f}" for x in s["val_ppl_per_seed"])
        many = " / ".join(f"{x:,.1f}" for x in s["iterate_val_ppl_per_seed"])
        per_seed.append(f"  {name}: after {steps} steps {one}" + (f"; averaged {many}" * bool(k)))
    rows += ["", *per_seed]
    if r.get("levers"):
        rows += [
            "",
            "| lever (each row adds to the one above) | train tokens/s | eval tokens/s |",
            "| --- | ---: | ---: |",
        ]
        for name, lever in r["levers"].items():
            if "error" in lever:
                rows.append(f"| {name} | failed: {lever['error']} | |")
                continue
            train, evals = lever["train_tokens_per_s"], lever["eval_tokens_per_s"]
            rows.append(f"| {name} | {train:,.0f} | {evals:,.0f} |")
    d, st = r["data"], r["startup"]
    rows += [
        "",
        f"data preparation: cold {d['cold_s']:.2f} s, cached {d['cached_s']:.3f} s",
        f"startup: --help {st['help_s']:.2f} s, --cfg job {st['cfg_job_s']:.2f} s, config error "
        f"{st['config_error_s']:.2f} s, command to first training step {st['first_step_s']:.2f} s",
        _machine_line(r["machine"]),
    ]
    return "\n".join(rows)


def _mfu(r: dict, name: str) -> str:
    """Achieved train GFLOP/s over the measured matmul peak of the setting's precision."""
    peak = r["machine"].get("peak_gflops", {}).get(PRECISION[name])
    if not peak:
        return "-"  # a result saved before the bench measured the peak
    s = r[name]
    return f"{100 * s['train_tokens_per_s'] * s['flops_per_token'] / 1e9 / peak:.1f}%"


def _machine_line(m: dict) -> str:
    peak = m.get("peak_gflops")
    ceiling = (f" | matmul peak (2048², best of 5): fp32 {peak['fp32']:,.0f} GFLOP/s, bf16 "
               f"{peak['bf16']:,.0f} GFLOP/s" if peak else "")  # fmt: skip
    isa = f" | ISA: {' '.join(m['isa']) or 'none of ' + ', '.join(ISA_FLAGS)}" if "isa" in m else ""
    rest = {k: v for k, v in m.items() if k not in ("peak_gflops", "isa")}
    return f"machine: {rest}{isa}{ceiling}"
