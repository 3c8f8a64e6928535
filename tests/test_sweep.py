"""Reports over sweeps, failed jobs that do not stop a sweep, and resume by config hash."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO, job_dir, run_cli, run_module, tiny_overrides
from lmx.errors import ConfigError
from lmx.report import report
from lmx.runs.status import mark_failed, read_status
from lmx.runs.sweep import config_hash
from lmx.runs.table import FIGURES


def fake_run(root: Path, name: str, overrides: list[str], metrics: dict | None) -> None:
    run_dir = root / name
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))


def done(val: float, test: float, scored: int = 1000) -> dict:
    history = [
        {"epoch": 1, "step": 10, "val_ppl": val * 1.5},
        {"epoch": 2, "step": 20, "val_ppl": val},
    ]
    return {
        "status": "done",
        "val_tokens_scored": scored,
        "val_tokens_total": 1000,
        "test_tokens_scored": scored,
        "test_tokens_total": 1000,
        "best_val_ppl": val,
        "test_ppl": test,
        "epochs": 2,
        "train_tokens_per_s": 2500.0,
        "wall_time_s": 90.0,
        "history": history,
    }


def test_report_on_a_fabricated_sweep(tmp_path):
    common = ["data.local_dir=/data", "hydra.sweep.dir=x"]
    fake_run(tmp_path, "0", ["model.nhead=1", *common], done(300.0, 280.0))
    fake_run(tmp_path, "1", ["model.nhead=2", *common], done(250.0, 240.0, scored=25))
    fake_run(
        tmp_path,
        "2",
        ["model.nhead=4", *common],
        {"status": "failed", "error": "RuntimeError: out of memory"},
    )
    fake_run(tmp_path, "3", ["model.nhead=8", *common], None)  # died or still in epoch 1
    stopped = {"status": "interrupted", "error": "SIGTERM: stopped after step 7"}
    fake_run(tmp_path, "4", ["model.nhead=16", *common], stopped)

    text = report(tmp_path)
    sections = text.split("\n== ")
    scored, unscored = sections[1].splitlines(), sections[3].splitlines()
    # runs 0 and 1 scored different shares of the splits: another quantity, ranked apart
    assert len(sections) == 4 and "ranked apart" in sections[0]
    assert "partial: val 2.5%, test 2.5%" in scored[0] and "| full" in sections[2].splitlines()[0]
    assert scored[1].split() == ["run", *FIGURES]  # nothing varies within one set
    assert scored[3].split()[:3] == ["1", "250.00", "240.00"]
    assert sections[2].splitlines()[3].split()[:3] == ["0", "300.00", "280.00"]
    assert unscored[0] == "3 run(s) not scored yet"
    assert [line.split()[0] for line in unscored[3:6]] == ["2", "3", "4"]
    assert [line.split()[-1] for line in unscored[3:6]] == ["failed", "running", "interrupted"]
    assert "2: failed: RuntimeError: out of memory" in text
    assert "4: interrupted: SIGTERM: stopped after step 7" in text  # resumable, not failed

    with open(tmp_path / "report.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == ["1", "0", "2", "3", "4"]  # by best val ppl
    assert float(table[0]["best_val_ppl"]) == 250.0 and table[2]["status"] == "failed"
    assert table[0]["model.nhead"] == "2"
    markdown = (tmp_path / "report.md").read_text()
    assert "| 1 | 250.00 | 240.00 |" in markdown
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert "<img" in (tmp_path / "report.html").read_text()


def test_report_cli_errors(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lmx.report", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "no runs under" in proc.stderr
    assert "Traceback" not in proc.stderr
    (tmp_path / "multirun.yaml").write_text("{}")
    with pytest.raises(ConfigError, match="multirun.yaml is a file: give a run dir, a sweep"):
        report(tmp_path / "multirun.yaml")


def test_a_sweep_dir_given_as_a_checkpoint_names_one_of_its_runs(tmp_path):
    from lmx.errors import CheckpointError
    from lmx.models.pretrained import resolve_checkpoint

    for job in ("0_nhead=2", "1_nhead=4"):
        (tmp_path / job / "checkpoints").mkdir(parents=True)
        (tmp_path / job / "checkpoints" / "best.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="holds 2 runs, not one: pick one, e.g. ckpt="):
        resolve_checkpoint(tmp_path)
    assert resolve_checkpoint(tmp_path / "1_nhead=4") == tmp_path / "1_nhead=4/checkpoints/best.pt"
    # a run's checkpoints folder stands for the run
    best = tmp_path / "1_nhead=4/checkpoints/best.pt"
    assert resolve_checkpoint(tmp_path / "1_nhead=4/checkpoints") == best


def test_a_run_shorter_than_a_second_shows_its_wall_time_as_such():
    from lmx.runs.table import _wall

    assert [_wall(0.2), _wall(3.4), _wall(600.0)] == ["<1 s", "3 s", "10.0 min"]


def test_config_hash_ignores_sweep_controls():
    cfg = {"model": {"nhead": 2}, "sweep": {"resume": False}}
    same = {"model": {"nhead": 2}, "sweep": {"resume": True}}
    other = {"model": {"nhead": 4}, "sweep": {"resume": False}}
    assert config_hash(cfg) == config_hash(same) != config_hash(other)


def test_failed_job_does_not_stop_the_sweep(corpus_dir, cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    earlier = sweep / "0_bptt=400"  # an earlier sweep's finished run in job 0's folder
    earlier.mkdir(parents=True)
    (earlier / "metrics.json").write_text(json.dumps({"status": "done", "test_ppl": 5.0}))
    proc = run_cli(
        "-m",
        *tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=1"),
        "data.bptt=400,8",
        f"hydra.sweep.dir={sweep}",
    )  # the tiny corpus is too small for bptt 400: found when job 0 loads the data
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "1 of 2 job(s) failed" in output and "too few for one batch" in output
    assert read_status(job_dir(sweep, 0))["status"] == "failed"  # not the earlier run's done
    assert "Traceback" in (job_dir(sweep, 0) / "error.txt").read_text()
    assert read_status(job_dir(sweep, 1))["status"] == "done"  # the job after the failure ran


def test_a_sweep_whose_jobs_run_in_their_own_dirs_still_counts_its_failures(
    corpus_dir, cache_dir, tmp_path
):
    # hydra.job.chdir=true: each job's cwd is its run dir, where the relative sweep dir is not
    proc = run_module(
        "lmx.train", "-m", *tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=1"),
        "data.bptt=400,8", "hydra.sweep.dir=sweep", "hydra.job.chdir=true", cwd=tmp_path,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "1 of 2 job(s) failed" in output, output[-2000:]


def test_interrupted_sweep_resumes_without_rerunning_finished_jobs(corpus_dir, cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=8"),
        "model.nhead=1,2,4",
        f"hydra.sweep.dir={sweep}",
        "sweep.resume=true",
    ]
    log = tmp_path / "first_try.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lmx.train", *args],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        deadline = time.time() + 240
        while not list(sweep.glob("1*/checkpoints/last.pt")):  # job 1 saved an epoch...
            assert proc.poll() is None and time.time() < deadline, "job 1 did not save"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # ...then Ctrl-C while job 1 trains
        assert proc.wait(timeout=60) != 0
    # it says how the sweep goes on, not only the job
    assert "with sweep.resume=true and the same hydra.sweep.dir, resumes this job" in (
        log.read_text()
    )
    assert read_status(job_dir(sweep, 1)).get("status") != "done"
    first = (job_dir(sweep, 0) / "metrics.json").read_text()

    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "already finished" in proc.stdout + proc.stderr
    # job 1's try goes on from its checkpoint, not from scratch; the others are no tries
    output = proc.stdout + proc.stderr
    assert output.count("holds this job's unfinished try; resuming it") == 1
    assert f"{job_dir(sweep, 1)} holds this job's unfinished try" in output
    assert (
        f"3 job(s) finished in {sweep} (1 of them skipped: finished before)"
        in proc.stdout + proc.stderr
    )
    assert (job_dir(sweep, 0) / "metrics.json").read_text() == first  # not run again
    assert all(read_status(job_dir(sweep, j))["status"] == "done" for j in ("0", "1", "2"))
    again = run_cli(*args)  # a job finished through a resume is the same job: skipped too
    assert "3 job(s) finished in" in again.stdout + again.stderr
    assert "(3 of them skipped: finished before)" in again.stdout + again.stderr


def test_optuna_preset_reports_its_best_trial(corpus_dir, cache_dir, tmp_path):
    sweep = tmp_path / "optuna"
    proc = run_cli(
        "-m",
        "experiment=hpo_optuna",
        *tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=1"),
        "hydra.sweeper.n_trials=3",
        f"hydra.sweep.dir={sweep}",
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-2000:]
    assert "Best value" in output
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    ppls = [read_status(job_dir(sweep, j))["best_val_ppl"] for j in ("0", "1", "2")]
    assert best.best_value == min(ppls)  # the trials' own metrics, not a placeholder
    # the tiny overrides pin optim.lr and model.d_model on the command line, which takes them
    # out of the search space; dropout is still searched
    assert set(best.best_params) == {"model.dropout"}


def test_joblib_launcher_splits_threads_between_jobs(corpus_dir, cache_dir, tmp_path):
    sweep = tmp_path / "parallel"
    proc = run_cli(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=1"),
        "model.nhead=1,2",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    cores = len(os.sched_getaffinity(0))
    for job in ("0", "1"):
        assert read_status(job_dir(sweep, job))["status"] == "done"
        log = (job_dir(sweep, job) / "train.log").read_text()
        assert f"2 concurrent jobs: {max(1, cores // 2)} CPU thread(s) each" in log


def test_mark_failed_never_downgrades_a_finished_run(tmp_path):
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "metrics.json").write_text(json.dumps({"status": "done", "test_ppl": 5.0}))
    mark_failed(finished, KeyboardInterrupt())
    assert read_status(finished) == {"status": "done", "test_ppl": 5.0}
    mark_failed(tmp_path / "broken", RuntimeError("boom\n  second line"))
    status = read_status(tmp_path / "broken")
    assert status == {"status": "failed", "error": "RuntimeError: boom second line"}
    assert "RuntimeError: boom" in (tmp_path / "broken" / "error.txt").read_text()


def test_a_finished_job_of_an_older_sweep_is_found_by_its_relative_data_path(tmp_path, monkeypatch):
    # Older lmx saved data.local_dir as typed (relative); today's job config holds it absolute.
    from omegaconf import OmegaConf

    from conftest import compose_cfg
    from lmx.config.compose import absolute_paths
    from lmx.runs.sweep import find_finished

    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus").mkdir()
    old = compose_cfg(["data.local_dir=corpus"])
    run_dir = tmp_path / "sweep" / "0"  # older sweeps named a job by its number alone
    run_dir.mkdir(parents=True)
    old_saved = OmegaConf.to_container(old, resolve=True, enum_to_str=True)
    old_saved["model"]["_target_"] = "lmx.model.TransformerLM"  # and the old module path
    for key in ("head", "cutoffs", "div_value"):  # and no keys added since
        del old_saved["model"][key]
    del old_saved["name"], old_saved["trainer"]["samples"], old_saved["trainer"]["hparams_all"]
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(old_saved))
    (run_dir / "metrics.json").write_text(json.dumps({"status": "done"}))
    job = absolute_paths(compose_cfg(["data.local_dir=corpus"]))
    job_hash = config_hash(OmegaConf.to_container(job, resolve=True, enum_to_str=True))
    assert find_finished(tmp_path / "sweep", job_hash) == run_dir


def test_a_search_jobs_folder_shows_its_floats_to_four_digits():
    from lmx.runs.naming import job_label

    overrides = ["optim.lr=2.588170214937917", "model.dropout=0.35", "model.nhead=2"]
    keys = ["optim.lr", "model.dropout", "model.nhead"]
    assert job_label(overrides, keys) == "lr=2.588,dropout=0.35,nhead=2"


def test_the_sweep_summary_counts_this_multiruns_jobs_not_an_older_sweeps_in_the_same_dir(
    tmp_path, caplog
):
    from lmx.runs.status import record_job
    from lmx.runs.sweep import SweepSummary

    sweep = tmp_path / "sweep"
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "overrides": {"task": []}}})
    older = SweepSummary()
    older.on_multirun_start(cfg)
    record_job(sweep / "old_failed", sweep, "failed", "an older sweep's error")
    record_job(sweep / "old_done", sweep, "done")
    summary = SweepSummary()  # a new multirun in the same dir, started within the same second
    summary.on_multirun_start(cfg)
    record_job(sweep / "new_done", sweep, "done")
    record_job(sweep / "old_done", sweep, "skipped", "finished in old_done")  # sweep.resume
    with caplog.at_level("INFO"):
        summary.on_multirun_end(cfg)  # the older sweep's failure is not this one's: no exit
    assert (
        f"sweep: 2 job(s) finished in {sweep} (1 of them skipped: finished before)" in caplog.text
    )
    record_job(sweep / "new_failed", sweep, "failed", "ValueError: this sweep's")
    record_job(sweep / "new_killed", sweep, "running")  # never said how it ended
    caplog.clear()
    with pytest.raises(SystemExit) as stop:
        summary.on_multirun_end(cfg)
    assert stop.value.code == 1
    assert f"sweep: 2 of 4 job(s) failed in {sweep} (1 of them skipped: finished before):" in (
        caplog.text
    )
    assert "new_failed: ValueError: this sweep's" in caplog.text and "an older" not in caplog.text
    assert "new_killed: stopped without saying how (killed?)" in caplog.text


def test_a_job_that_fails_where_an_earlier_run_finished_is_marked_failed(tmp_path):
    # The earlier run's "done" would otherwise stand for this try's results in lmx report.
    run_dir = tmp_path / "0_nhead=2"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"status": "done", "test_ppl": 5.0}))
    mark_failed(run_dir, ValueError("bad data"), over_done=True)
    assert read_status(run_dir) == {"status": "failed", "test_ppl": 5.0,
                                    "error": "ValueError: bad data"}  # fmt: skip


def test_a_job_skipped_because_it_finished_in_another_folder_is_not_reported_as_a_run(tmp_path):
    from lmx.runs.collect import find_runs
    from lmx.runs.status import MULTIRUN_FILE, record_job

    sweep = tmp_path / "sweep"
    fake_run(sweep, "0_nhead=2", ["model.nhead=2"], done(100.0, 90.0))
    fake_run(sweep, "3_nhead=2", ["model.nhead=2"], None)  # this sweep's job, run elsewhere
    fake_run(sweep, "4_nhead=4", ["model.nhead=4"], None)  # died before writing anything
    (sweep / MULTIRUN_FILE).write_text("abc")
    record_job(sweep / "3_nhead=2", sweep, "skipped", f"finished in {sweep / '0_nhead=2'}")
    assert find_runs(sweep) == [sweep / "0_nhead=2", sweep / "4_nhead=4"]


def test_a_sweep_preset_run_without_multirun_says_it_is_one_run(corpus_dir, cache_dir, tmp_path):
    tiny = tiny_overrides(corpus_dir, cache_dir, "trainer.epochs=0", "trainer.test=false")
    args = [o for o in tiny if not o.startswith(("model.nhead=", "model.nlayers="))]
    proc = run_cli("experiment=sweep_heads", *args, f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("this config plans a sweep over model.nhead, model.nlayers, which runs with -m"
            in proc.stdout + proc.stderr)  # fmt: skip
    # a sweep job's own resume command sets each swept key: one run, as planned
    keys = ("model.nhead=2", "model.nlayers=2")
    proc = run_cli("experiment=sweep_heads", *args, *keys, f"hydra.run.dir={tmp_path / 's'}")
    assert proc.returncode == 0 and "plans a sweep" not in proc.stdout + proc.stderr


def test_a_preset_grid_key_fixed_on_the_command_line_is_not_in_the_job_names(
    corpus_dir, cache_dir, tmp_path
):
    # sweep_heads varies model.nhead and model.nlayers; model.nlayers=1 takes it out of the grid
    sweep = tmp_path / "sweep"
    args = [o for o in tiny_overrides(corpus_dir, cache_dir) if not o.startswith("model.nhead")]
    proc = run_cli("-m", "experiment=sweep_heads", *args, "trainer.epochs=0", "trainer.test=false",
                   "model.nlayers=1", f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert names == ["0_nhead=1", "1_nhead=2", "2_nhead=4"]


def test_sweep_resume_without_a_multirun_is_refused_before_any_work(tmp_path):
    proc = run_cli("sweep.resume=true", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode != 0 and "sweep.resume=true has no effect without -m" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_sweep_resume_resumes_only_this_jobs_unfinished_try(corpus_dir, cache_dir, tmp_path):
    from lmx.runs.sweep import config_hash

    # trainer.resume=auto is the job itself; a resume from another run is another job
    base = {"model": {"nhead": 2}, "trainer": {"resume": None}}
    auto = {**base, "trainer": {"resume": "auto"}}
    paths = [{**base, "trainer": {"resume": p}} for p in ("/runs/a", "/runs/b")]
    assert config_hash(base) == config_hash(auto)
    assert len({config_hash(base), *(config_hash(p) for p in paths)}) == 3
    # a folder that holds a finished run of other settings is no unfinished try of this job
    sweep = tmp_path / "sweep"
    args = ["-m", *tiny_overrides(corpus_dir, cache_dir), "model.nhead=1,2",
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    assert run_cli(*args, "trainer.epochs=1").returncode == 0
    proc = run_cli(*args, "trainer.epochs=2", "sweep.resume=true")
    assert proc.returncode == 0 and "unfinished try" not in proc.stdout + proc.stderr
    history = json.loads((job_dir(sweep, 0) / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]  # run afresh, to the new length


def test_parallel_jobs_share_the_cores_unless_device_threads_says_otherwise(caplog):
    import torch

    from lmx.runtime.launcher import share_machine

    cores = len(os.sched_getaffinity(0))
    hydra_cfg = OmegaConf.create({"launcher": {"n_jobs": 2}, "job": {"num": 0}})
    before = torch.get_num_threads()
    try:
        with caplog.at_level("INFO"):
            share_machine(hydra_cfg)
        assert torch.get_num_threads() == max(1, cores // 2) and "slow every job" not in caplog.text
        with caplog.at_level("INFO"):
            share_machine(hydra_cfg, threads=cores)  # the user's setting wins, and is said
        assert torch.get_num_threads() == cores
        assert f"2 concurrent jobs: {cores} CPU thread(s) each" in caplog.text
        assert f"device.threads={cores} for each of 2 concurrent jobs" in caplog.text
    finally:
        torch.set_num_threads(before)
