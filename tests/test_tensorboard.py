"""What TensorBoard shows of a sweep: runs named by their swept values, the HParams table
with the swept keys first, no hparam/* cards, train and val ppl on one chart, samples."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import job_dir, run_cli, tiny_overrides


def read_events(run_dir: Path) -> tuple[dict[str, int], list[str], list[str], list[str], list]:
    """(tag -> count, HParams keys in order, those flagged `differs` (TensorBoard lists them
    first), its metrics, the text of the samples)."""
    tags: dict[str, int] = {}
    keys, flagged, metrics, texts = [], [], [], []
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                tags[value.tag] = tags.get(value.tag, 0) + 1
                if value.tag == "_hparams_/experiment":
                    data = plugin_data_pb2.HParamsPluginData.FromString(
                        value.metadata.plugin_data.content
                    )
                    keys = [h.name for h in data.experiment.hparam_infos]
                    flagged = [h.name for h in data.experiment.hparam_infos if h.differs]
                    metrics = [m.name.tag for m in data.experiment.metric_infos]
                if value.tag.startswith("samples"):
                    texts.append(value.tensor.string_val[0].decode())
    return tags, keys, flagged, metrics, texts


def test_a_sweep_reads_well_in_tensorboard(corpus_dir, cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    extra = ("trainer.epochs=2", "trainer.limit_train_batches=4", "trainer.samples=2")
    proc = run_cli("-m", *tiny_overrides(corpus_dir, cache_dir, *extra),
                   "model.nhead=1,2", "model.nlayers=1,2", f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert names == ["0_nhead=1,nlayers=1", "1_nhead=1,nlayers=2", "2_nhead=2,nlayers=1",
                     "3_nhead=2,nlayers=2"]  # fmt: skip
    # TensorBoard names a run by its event folder's path under --logdir
    events = sorted(str(p.relative_to(sweep)) for p in sweep.glob("**/events.out.tfevents.*"))
    assert [e.split("/")[0] for e in events] == names
    tags, keys, flagged, metrics, texts = read_events(job_dir(sweep, 2))
    assert keys[:2] == ["model.nhead", "model.nlayers"]  # the swept keys first
    assert flagged == ["model.nhead", "model.nlayers"]  # and TensorBoard's order keeps them so
    # then what differs from the defaults (tiny_overrides); never where the data lies
    assert "model.d_model" in keys and "trainer.epochs" in keys
    assert not any(k.startswith(("data.local_dir", "data.cache_dir", "hydra")) for k in keys)
    assert "optim.momentum" not in keys  # a constant at its default
    assert metrics == ["val/best_ppl", "val/ppl", "test/ppl", "train/tokens_per_s",
                       "model/parameters"]  # fmt: skip
    assert all(m in tags for m in metrics)  # each a series the run logs
    assert not any(t.startswith("hparam/") for t in tags)
    assert tags["val/ppl"] == 2 and tags["custom_scalars__config__"] == 1
    assert len(texts) == 2 and all(t.startswith("1. **") and "\n2. **" in t for t in texts)


def test_a_named_run_and_all_its_hparams(corpus_dir, cache_dir, tmp_path):
    extra = ("trainer.epochs=1", "trainer.limit_train_batches=3", "trainer.hparams_all=true")
    proc = run_cli(*tiny_overrides(corpus_dir, cache_dir, *extra), "name=my baseline",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    [run_dir] = (tmp_path / "outputs").glob("*/*")
    assert run_dir.name.endswith("_my_baseline")  # after the time, fit for a path
    _, keys, flagged, _, _ = read_events(run_dir)
    assert "model.d_model" in flagged and "optim.momentum" not in flagged
    assert "optim.momentum" in keys  # trainer.hparams_all: the constants too, after the rest
    assert keys.index("model.d_model") < keys.index("optim.momentum")


def test_the_ppl_chart_holds_train_and_val_ppl_only_with_an_average_logged_too(
    corpus_dir, cache_dir, tmp_path
):
    # Custom Scalars tags are regular expressions: val/ppl alone also matches val/ppl_raw.
    import re

    from tensorboard.plugins.custom_scalar import layout_pb2

    from conftest import compose_cfg
    from lmx.train import train

    extra = ("trainer.epochs=1", "trainer.limit_train_batches=4", "trainer.ema.decay=0.9")
    train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, *extra)), tmp_path / "r")
    layout, tags = None, set()
    for path in (tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                tags.add(value.tag)
                if value.tag == "custom_scalars__config__":
                    layout = layout_pb2.Layout.FromString(value.tensor.string_val[0])
    assert "val/ppl_raw" in tags
    chart = layout.category[0].chart[0].multiline
    shown = {t for t in tags for pattern in chart.tag if re.search(pattern, t)}
    assert shown == {"train/ppl", "val/ppl"}


def test_samples_of_a_model_with_eos_keep_each_to_one_markdown_item(
    corpus_dir, cache_dir, tmp_path
):
    from conftest import compose_cfg
    from lmx.train import train

    extra = ("trainer.epochs=1", "trainer.limit_train_batches=4", "trainer.samples=3",
             "data.tokenizer.eos=true")  # fmt: skip
    train(compose_cfg(tiny_overrides(corpus_dir, cache_dir, *extra)), tmp_path / "r")
    *_, texts = read_events(tmp_path / "r")
    assert texts and all(len(t.split("\n")) == 3 for t in texts)  # one line a sample
    assert any("↵" in t for t in texts)  # the line breaks <eos> made, drawn
    assert all(
        line.startswith(f"{i}. **") for t in texts for i, line in enumerate(t.split("\n"), 1)
    )
