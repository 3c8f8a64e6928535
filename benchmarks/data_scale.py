"""How data preparation grows with the corpus: N x WikiText-2's train split, for several N.

    python benchmarks/data_scale.py --data ../shared/data/wikitext-2 [--scales 1,10,50]
        [--work /tmp] [--out PATH]

For each N it writes a folder with train.txt = WikiText-2's train split N times over and the
real valid and test splits, then measures, each in a fresh process:
- cold preparation: `lmx.data.cache.load_corpus` with an empty cache (read, train the
  vocabulary, encode every split, write the cache), its seconds and peak RSS;
- everything lmx keeps on disk for that corpus (the cache folder);
- the cached start: the whole command `python -m lmx.train experiment=smoke
  trainer.limit_train_batches=5` with the cache warm, from start to exit, twice. The first
  still reads the text to key the cache (its files were written seconds before they were
  hashed, too recently to trust their stamps); the second, like any start on a corpus that
  has sat on disk, does not (lmx.data.sources.files_fingerprint).
It prints one row per N and how each figure grows from the smallest N to the largest.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TAG = "DATA_SCALE_RESULT "


def prepare(folder: str, cache: str) -> None:
    """Cold preparation in this process; prints seconds and peak RSS."""
    import resource

    from lmx.config.compose import compose
    from lmx.data.cache import load_corpus

    cfg = compose([f"data.local_dir={folder}", f"data.cache_dir={cache}"])
    start = time.perf_counter()
    corpus = load_corpus(cfg.data)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tokens = int(corpus.splits["train"].numel())
    print(TAG + json.dumps({"cold_s": seconds, "peak_rss_mb": rss, "train_tokens": tokens}))


def build_folder(data: Path, folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    train = (data / "train.txt").read_bytes()
    with (folder / "train.txt").open("wb") as f:
        for _ in range(n):
            f.write(train)
    for split in ("valid", "test"):
        shutil.copy(data / f"{split}.txt", folder / f"{split}.txt")


def disk_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def measure(data: Path, n: int, work: Path) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"lmx-scale-{n}x-", dir=work))
    try:
        folder, cache = root / "corpus", root / "cache"
        build_folder(data, folder, n)
        proc = subprocess.run([sys.executable, __file__, "--prepare", str(folder), str(cache)],
                              capture_output=True, text=True)  # fmt: skip
        lines = [x for x in proc.stdout.splitlines() if x.startswith(TAG)]
        if proc.returncode or not lines:
            raise SystemExit(f"{n}x: preparation failed:\n{proc.stderr[-2000:]}")
        row = json.loads(lines[-1][len(TAG) :])
        row["n"], row["text_mb"] = n, (folder / "train.txt").stat().st_size / 2**20
        row["disk_mb"] = disk_mb(cache)
        cmd = [sys.executable, "-m", "lmx.train", "experiment=smoke", f"data.local_dir={folder}",
               f"data.cache_dir={cache}", "trainer.limit_train_batches=5",
               f"hydra.run.dir={root / 'run'}", "trainer.progress=false"]  # fmt: skip
        for key in ("cached_start_s", "cached_start_again_s"):
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            row[key] = time.perf_counter() - start
            if proc.returncode:
                raise SystemExit(f"{n}x: the smoke command failed:\n{proc.stderr[-2000:]}")
        return row
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="WikiText-2 folder (train/valid/test.txt)")
    parser.add_argument("--scales", default="1,10,50")
    parser.add_argument("--work", default=tempfile.gettempdir(), help="where the copies go")
    parser.add_argument("--out", default="outputs/data_scale.json")
    parser.add_argument("--prepare", nargs=2, help=argparse.SUPPRESS)  # worker: FOLDER CACHE
    args = parser.parse_args()
    if args.prepare:
        prepare(*args.prepare)
        return
    if not args.data:
        parser.error("--data is required")
    import os

    from lmx.bench.peak import cpu_model, isa_flags

    machine = {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "isa": isa_flags()}
    print(f"{machine['cpu']}, {machine['cores']} cores; flags {' '.join(machine['isa'])}; "
          f"Python {platform.python_version()}")  # fmt: skip
    print(f"{'N':>4} {'text MB':>8} {'train tokens':>13} {'cold s':>7} {'peak RSS MB':>12} "
          f"{'disk MB':>8} {'cached start s':>15} {'again s':>8}")  # fmt: skip
    rows = []
    for n in (int(x) for x in args.scales.split(",")):
        r = measure(Path(args.data), n, Path(args.work))
        rows.append(r)
        print(
            f"{n:4d} {r['text_mb']:8.0f} {r['train_tokens']:13,d} {r['cold_s']:7.1f} "
            f"{r['peak_rss_mb']:12,.0f} {r['disk_mb']:8.0f} {r['cached_start_s']:15.2f} "
            f"{r['cached_start_again_s']:8.2f}"
        )
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        rss = b["peak_rss_mb"] / a["peak_rss_mb"]
        print(f"from {a['n']}x to {b['n']}x ({b['n'] / a['n']:.0f}x the text): cold preparation "
              f"{b['cold_s'] / a['cold_s']:.1f}x, peak RSS {rss:.1f}x"
              f" (+{b['peak_rss_mb'] - a['peak_rss_mb']:,.0f} MB), disk "
              f"{b['disk_mb'] / a['disk_mb']:.1f}x, cached start "
              f"{b['cached_start_again_s'] / a['cached_start_again_s']:.1f}x (again)")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
