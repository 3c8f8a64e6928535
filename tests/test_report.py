"""`lmx report`: runs grouped over seeds with standard errors checked against numbers worked
by hand, and runs on other data never ranked with each other."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lmx.errors import ConfigError
from lmx.report import report


def fake_run(root: Path, name: str, config: dict, val_loss: float, test_loss: float) -> None:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    history = [
        {"epoch": 1, "step": 10, "val_ppl": math.exp(val_loss) * 1.2, "val_eval": "w35"},
        {"epoch": 2, "step": 20, "val_ppl": math.exp(val_loss), "val_eval": "w35"},
    ]
    metrics = {
        "status": "done", "best_val_loss": val_loss, "best_val_ppl": math.exp(val_loss),
        "test_loss": test_loss, "test_ppl": math.exp(test_loss), "val_tokens_scored": 100,
        "val_tokens_total": 100, "test_tokens_scored": 100, "test_tokens_total": 100,
        "val_eval": "w35", "vocab_size": 50, "epochs": 2, "steps": 20, "history": history,
    }  # fmt: skip
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def config(nhead: int, seed: int, local_dir: str = "/corpus/a") -> dict:
    return {"data": {"name": "text", "local_dir": local_dir, "tokenizer": {"kind": "word"}},
            "model": {"nhead": nhead, "nlayers": 1}, "trainer": {"seed": seed}}  # fmt: skip


# (nhead, seed) -> (best val loss, test loss)
LOSSES = {(1, 1): (5.0, 5.1), (1, 2): (5.2, 5.3), (2, 1): (4.9, 5.0), (2, 2): (5.1, 5.2),
          (4, 1): (4.0, 4.1), (4, 2): (4.02, 4.12)}  # fmt: skip


@pytest.fixture
def sweep(tmp_path):
    for i, ((nhead, seed), (val, test)) in enumerate(LOSSES.items()):
        fake_run(tmp_path, str(i), config(nhead, seed), val, test)
    return tmp_path


def rows_of(text: str, header_start: str) -> list[list[str]]:
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    return [line.split("  ") for line in lines[at + 2 :] if line.strip()][:3]


def test_groups_over_seeds_with_the_standard_errors_worked_by_hand(sweep):
    text = report(sweep, group_by="model.nhead")
    groups = {r[0]: [c.strip() for c in r if c.strip()] for r in rows_of(text, "model.nhead  n")}
    # nhead=1: losses 5.0, 5.2 -> mean 5.1, sd 0.1414, SE 0.1 (10% on the log scale) -> ppl
    # e^5.1 = 164.02
    assert groups["1"] == ["1", "2", "164.02 ± 10%", "181.27 ± 10%", "baseline", "baseline"]
    # nhead=2: mean 5.0 -> 148.41; vs nhead=1: exp(-0.1) - 1 = -9.52%, SE 100 * sqrt(0.1^2 +
    # 0.1^2) = 14%: |-0.1| within 2 SE, no mark
    assert groups["2"][2] == "148.41 ± 10%" and groups["2"][4] == "-9.52% ± 14%"
    # nhead=4: mean 4.01, SE 0.01 -> 55.15; exp(-1.09) - 1 = -66.38%, SE 10.05%: 1.09 beyond
    # 2 SE, marked
    assert groups["4"][2] == "55.15 ± 1%" and groups["4"][4] == "-66.38% ± 10% *"
    assert groups["4"][5] == "-66.38% ± 10% *"  # test: the same offsets
    with open(sweep / "report_groups.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["model.nhead"] for r in table] == ["1", "2", "4"] and table[2]["n"] == "2"
    assert table[0]["fingerprint"].startswith("text (/corpus/a)")
    # the numbers behind the text, for error-bar work without parsing it
    assert float(table[0]["val_loss_mean"]) == pytest.approx(5.1)
    assert float(table[0]["val_loss_se"]) == pytest.approx(0.1)
    assert float(table[2]["test_loss_se"]) == pytest.approx(0.01) and table[2]["n_finished"] == "2"
    assert (sweep / "report_groups.png").stat().st_size > 1000
    # an SE this wide is said as the range it spans: ±10% on the log scale is x/÷ 1.11
    assert "164.02 ± 10% spans 148.41 to 181.27 (×/÷ 1.11)" in text


def test_a_named_baseline_and_the_errors_that_name_the_culprit(sweep):
    text = report(sweep, group_by="model.nhead", baseline="model.nhead=4")
    groups = {r[0]: [c.strip() for c in r if c.strip()] for r in rows_of(text, "model.nhead  n")}
    assert groups["4"][4] == "baseline" and groups["1"][4] == "+197.43% ± 10% *"  # e^1.09 - 1
    with pytest.raises(ConfigError, match="did you mean model.nhead"):
        report(sweep, group_by="model.nheads")
    with pytest.raises(ConfigError, match="no such group; the groups: model.nhead=1; model.nhe"):
        report(sweep, group_by="model.nhead", baseline="model.nhead=3")


def test_unfinished_and_diverged_runs_are_counted_not_pooled(sweep):
    fake_run(sweep, "nan", config(1, 3), float("inf"), float("inf"))  # every validation inf
    fake_run(sweep, "died", config(1, 4), 1.0, 1.0)
    metrics = json.loads((sweep / "died" / "metrics.json").read_text())
    (sweep / "died" / "metrics.json").write_text(json.dumps({**metrics, "status": "failed"}))
    text = report(sweep, group_by="model.nhead")
    groups = {r[0]: [c.strip() for c in r if c.strip()] for r in rows_of(text, "model.nhead  n")}
    assert groups["1"][:3] == ["1", "2 (+2 left out)", "164.02 ± 10%"]  # as without them


def test_a_baseline_missing_from_one_corpus_falls_back_there(tmp_path):
    fake_run(tmp_path, "a1", config(1, 1, "/corpus/a"), 5.0, 5.0)
    fake_run(tmp_path, "a2", config(2, 1, "/corpus/a"), 5.5, 5.5)
    fake_run(tmp_path, "b1", config(1, 1, "/corpus/b"), 3.0, 3.0)
    text = report(tmp_path, group_by="model.nhead", baseline="model.nhead=2")
    assert "--baseline model.nhead=2: no such group; the groups: model.nhead=1: here the first" \
        in text  # fmt: skip
    a = text.split("\n== ")[1]
    assert "+0.00%" not in a and "-39.35%" in a  # corpus a: nhead=1 vs nhead=2, e^-0.5 - 1


def test_runs_on_other_corpora_are_never_ranked_together(tmp_path):
    fake_run(tmp_path, "a1", config(1, 1, "/corpus/a"), 5.0, 5.0)
    fake_run(tmp_path, "a2", config(2, 1, "/corpus/a"), 5.5, 5.5)
    fake_run(tmp_path, "b1", config(1, 1, "/corpus/b"), 3.0, 3.0)  # lowest, other data
    text = report(tmp_path, group_by="model.nhead")
    sections = text.split("\n== ")[1:]
    assert "ranked apart" in text and len(sections) == 2
    a = next(s for s in sections if "/corpus/a" in s.splitlines()[0])
    b = next(s for s in sections if "/corpus/b" in s.splitlines()[0])
    assert "b1" not in a and "a1" not in b and "a2" not in b
    ranked = [line.split()[0] for line in a.splitlines()[3:5]]
    assert ranked == ["a1", "a2"]
    group = b.splitlines()[b.splitlines().index("") + 4].split()
    assert group == ["1", "1", "20.09", "20.09", "baseline", "baseline"]  # n=1: no SE


def test_runs_scored_in_other_rows_are_never_ranked_together(tmp_path):
    # data.eval_batch_size cuts the split into that many rows: other tokens are scored
    for name, rows in (("r10", 10), ("r1", 1)):
        settings = config(1, 1)
        settings["data"]["eval_batch_size"] = rows
        fake_run(tmp_path, name, settings, 5.0, 5.0)
    text = report(tmp_path)
    assert len(text.split("\n== ")[1:]) == 2
    assert "eval: w35, 10 rows | full" in text and "eval: w35, 1 row | full" in text


def test_the_command_takes_its_options(sweep):
    proc = subprocess.run([sys.executable, "-m", "lmx.report", str(sweep), "--group-by",
                           "model.nhead"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "grouped by model.nhead" in proc.stdout
    html = (sweep / "report.html").read_text()
    assert html.count("<table>") == 2 and html.count("<img") == 2


def test_a_wide_selection_shows_the_typed_settings_and_names_the_rest(tmp_path):
    for i in range(3):
        cfg = config(i + 1, i)
        cfg["optim"] = {f"k{j}": i * j for j in range(10)}  # nine more that vary
        fake_run(tmp_path, str(i), cfg, 5.0 + i, 5.0 + i)
        hydra = tmp_path / str(i) / ".hydra"
        hydra.mkdir()
        OmegaConf.save(OmegaConf.create([f"model.nhead={i + 1}"]), hydra / "overrides.yaml")
    text = report(tmp_path)
    header = text.splitlines()[1].split()
    assert header[1] == "model.nhead"  # typed on the command line: shown first of all
    assert len(header) == 1 + 8 + 7  # run, 8 settings, the figures
    hidden = "optim.k8, optim.k9, trainer.seed"  # optim.k0 is 0 in every run
    assert f"3 more settings differ (report.csv has them): {hidden}" in text
    with open(tmp_path / "report.csv") as f:
        assert "optim.k9" in next(csv.reader(f))


def test_group_bars_have_error_bars_only_where_runs_spread(tmp_path, monkeypatch):
    import matplotlib.axes

    from lmx.runs.groups import Group
    from lmx.runs.plots import plot_groups

    drawn = []
    errorbar = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, *args, **kwargs):
        drawn.append(list(x))
        return errorbar(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    groups = [Group(("1",), [{}] * 3, (6.0, 0.1), None), Group(("2",), [{}], (6.3, None), None),
              Group(("4",), [{}] * 2, (6.1, 0.05), None)]  # fmt: skip
    plot_groups(tmp_path / "g.png", groups, ["model.nhead"], "a data fingerprint")
    assert drawn == [["nhead=1\nn=3", "nhead=4\nn=2"]]  # not the group of one run
    assert (tmp_path / "g.png").stat().st_size > 1000


def test_a_misspelled_report_flag_gets_a_suggestion(tmp_path, capsys):
    from lmx.report import main

    with pytest.raises(SystemExit) as err:
        main([str(tmp_path), "--grup-by", "model.nhead"])
    assert err.value.code == 2
    assert "unrecognized arguments: --grup-by model.nhead; did you mean --group-by?" in (
        capsys.readouterr().err
    )


def test_a_diverged_runs_perplexity_prints_in_e_notation_not_in_full(tmp_path):
    from lmx.stats import shown

    assert shown(245.314) == "  245.31" and shown(math.exp(250), ",.2f") == "3.75e+108"
    fake_run(tmp_path, "diverged", config(1, 1), 250.0, 250.0)
    text = report(tmp_path)
    assert "3.75e+108" in text and "000,000" not in text


def test_a_group_says_what_else_differs_inside_it_and_which_runs_are_one_sample(sweep):
    # a copy of run 0 (nhead 1, seed 1), and an nhead 2 run trained longer than the others
    fake_run(sweep, "copy", config(1, 1), *LOSSES[(1, 1)])
    longer = config(2, 3)
    longer["trainer"]["epochs"] = 9
    fake_run(sweep, "longer", longer, 4.5, 4.6)
    fake_run(sweep, "alone", config(8, 1), 4.4, 4.5)
    text = report(sweep, group_by="model.nhead")
    assert "model.nhead=1: copy has the settings and seed of 0: one sample counted twice" in text
    assert "model.nhead=2 pools runs whose trainer.epochs also differ" in text
    assert "model.nhead=8 has one run: no standard error" in text
    assert "model.nhead=4 pools" not in text and "model.nhead=4:" not in text  # seeds only


def test_a_running_run_whose_process_is_gone_is_shown_killed(tmp_path):
    import os
    import socket

    from lmx.runs.collect import collect
    from lmx.runs.status import PROCESS_FILE

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    here = socket.gethostname()
    processes = {"killed": {"host": here, "pid": int(gone.stdout)},
                 "alive": {"host": here, "pid": os.getpid()},
                 "elsewhere": {"host": f"not-{here}", "pid": int(gone.stdout)},
                 "older": None}  # fmt: skip
    for name, process in processes.items():
        fake_run(tmp_path, name, config(1, 1), 5.0, 5.1)
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        (tmp_path / name / "metrics.json").write_text(json.dumps({**metrics, "status": "running"}))
        if process:
            (tmp_path / name / PROCESS_FILE).write_text(json.dumps(process))
    early = tmp_path / "early"  # killed in its first epoch: no metrics.json yet
    (early / ".hydra").mkdir(parents=True)
    (early / PROCESS_FILE).write_text(json.dumps(processes["killed"]))
    fake_run(tmp_path, "damaged", config(1, 1), 5.0, 5.1)
    (tmp_path / "damaged" / "metrics.json").write_text("{bad json")
    status = {r["run"]: r["status"] for r in collect(tmp_path)}
    assert status == {"killed": "killed", "alive": "running", "elsewhere": "running",
                      "older": "running", "damaged": "unreadable", "early": "killed"}  # fmt: skip


def test_a_run_records_the_process_that_started_it(tmp_path):
    from conftest import run_cli, tiny_overrides, write_corpus
    from lmx.runs.collect import collect
    from lmx.runs.status import PROCESS_FILE

    corpus = write_corpus(tmp_path / "corpus")
    proc = run_cli(*tiny_overrides(corpus, tmp_path / "cache"), f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 0, proc.stderr
    process = json.loads((tmp_path / "r" / PROCESS_FILE).read_text())
    assert set(process) == {"host", "pid"} and process["pid"] != os.getpid()
    assert [r["status"] for r in collect(tmp_path / "r")] == ["done"]  # its process is gone


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    for i in range(6):
        fake_run(tmp_path, f"run{i}", config(1 + i % 3, i), 5.0 + i / 100, 5.1)
    command = [sys.executable, "-m", "lmx.report", str(tmp_path), "--group-by", "model.nhead"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as `lmx report ... | head -0` does, before a line is written
    stderr = proc.communicate(timeout=120)[1].decode()
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


def test_a_run_that_died_before_its_config_makes_no_setting_differ(tmp_path):
    from lmx.runs.collect import collect, varying_keys

    fake_run(tmp_path, "a", config(1, 1), 5.0, 5.1)
    fake_run(tmp_path, "b", config(2, 1), 5.1, 5.2)
    early = tmp_path / "early" / ".hydra"  # died in data loading: overrides only
    early.mkdir(parents=True)
    (early / "overrides.yaml").write_text("- model.nhead=4\n")
    assert varying_keys(collect(tmp_path)) == ["model.nhead"]
