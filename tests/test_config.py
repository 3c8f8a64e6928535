"""Every shipped config composes; the defaults are the tutorial; bad overrides fail clearly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from conftest import compose_cfg, run_cli
from lmx.config.preflight import overrides_of
from lmx.config.rules import validate
from lmx.errors import ConfigError
from lmx.paths import config_dir


def shipped_options() -> list[tuple[str, str]]:
    """(group, option) for every YAML under conf/, nested groups included."""
    root = config_dir()
    options = []
    for folder, _, files in os.walk(root, followlinks=True):  # conf/experiment is a link
        group = Path(folder).relative_to(root).as_posix()
        options += [(group, Path(f).stem) for f in files if f.endswith(".yaml") and group != "."]
    return sorted(options)


def test_every_group_has_options():
    groups = {g for g, _ in shipped_options()}
    expected = {"model", "data", "data/tokenizer", "optim", "scheduler", "device", "trainer"}
    assert expected | {"experiment"} <= groups
    presets = {o for g, o in shipped_options() if g == "experiment"}
    assert {
        "seed_tutorial",
        "smoke",
        "examples_transformer",
        "sweep_heads",
        "hpo_optuna",
        "wt2_speedrun",
        "wt2_hour_cpu",
        "wt2_speedrun_gpu",
        "wt2_hour_gpu",
    } <= presets


def test_every_preset_says_what_it_is_for():
    for preset in (config_dir() / "experiment").glob("*.yaml"):
        header = preset.read_text().splitlines()[:3]
        assert header[0] == "# @package _global_", preset.name
        assert header[1].startswith(f"# {preset.stem}: "), preset.name


def assert_tutorial(cfg) -> None:
    """The hyperparameters of ../shared/docs/tutorial-spec.md, written out, not read back."""
    m, d, t = cfg.model, cfg.data, cfg.trainer
    assert (m.d_model, m.nhead, m.d_hid, m.nlayers, m.dropout, m.tie_weights) == (
        200,
        2,
        200,
        2,
        0.2,
        False,
    )
    assert (m.norm_first, m.activation, m.attn_dropout) == (False, "relu", None)
    assert (d.batch_size, d.eval_batch_size, d.bptt) == (20, 10, 35)
    assert d.hub_config == "wikitext-2-v1"
    assert d.tokenizer.normalization.value == "basic_english" and not d.tokenizer.eos
    assert d.tokenizer.vocab_size is None  # no silent cap
    assert cfg.optim._target_ == "torch.optim.SGD" and cfg.optim.lr == 5.0
    assert cfg.optim.momentum == 0.0 and cfg.optim.weight_decay == 0.0
    assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.StepLR"
    assert (cfg.scheduler.step_size, cfg.scheduler.gamma) == (1, 0.95)
    assert cfg.scheduler.interval.value == "epoch"
    assert cfg.device.precision.value == "fp32"
    assert (t.epochs, t.grad_clip, t.log_interval) == (3, 0.5, 200)
    assert t.limit_train_batches is None and t.limit_eval_batches is None


def test_seed_tutorial_is_the_tutorial():
    assert_tutorial(compose_cfg(["experiment=seed_tutorial"]))
    job = run_cli("experiment=seed_tutorial", "--cfg", "job").stdout
    assert "lr: 5.0" in job and "gamma: 0.95" in job and "bptt: 35" in job


def test_presets_change_what_they_say():
    examples = compose_cfg(["experiment=examples_transformer"]).data.tokenizer
    assert examples.normalization.value == "none" and examples.eos
    smoke = compose_cfg(["experiment=smoke"])
    assert smoke.trainer.limit_train_batches is not None and smoke.model.d_model < 200
    # The records: their budget is their own, and on the tutorial's tokens (comparable ppl).
    for preset, budget, device in (("wt2_speedrun", "60s", "cpu"), ("wt2_hour_cpu", "58m", "cpu"),
                                   ("wt2_speedrun_gpu", "20s", "cuda"),
                                   ("wt2_hour_gpu", "58m", "cuda")):  # fmt: skip
        cfg = compose_cfg([f"experiment={preset}"])
        assert cfg.trainer.max_time == budget and cfg.model.cell.value == "lstm"
        assert cfg.device.type.value == device
        assert cfg.data.tokenizer.normalization.value == "basic_english"
        assert cfg.model.head.value == "adaptive"


@pytest.mark.parametrize("group,option", shipped_options())
def test_every_shipped_option_composes_and_validates(group, option, tmp_path):
    # data=text has no hub source: like every local corpus it needs a folder
    local = [f"data.local_dir={tmp_path}"] if (group, option) == ("data", "text") else []
    cfg = compose_cfg([f"{group}={option}", *local])
    validate(cfg)
    if group in ("optim", "scheduler"):
        assert cfg[group]._target_.startswith(("torch.optim", "lmx."))


def test_defaults_are_the_tutorial():
    cfg = compose_cfg()
    assert_tutorial(cfg)
    assert cfg.device.type.value == "auto"


def test_override_reaches_the_built_model():
    cfg = compose_cfg(["model.nhead=4", "model.d_model=16", "model.d_hid=8"])
    model = instantiate(cfg.model, ntoken=50)
    assert model.encoder.layers[0].self_attn.num_heads == 4
    assert model.embedding.weight.shape == (50, 16)


def test_any_torch_optimizer_can_be_named():
    import torch

    from lmx.training.optim import build_optimizer

    cfg = compose_cfg(["optim=adamw", "optim._target_=torch.optim.Adam"])
    opt = build_optimizer(cfg.optim, [torch.nn.Parameter(torch.zeros(2))])
    assert type(opt) is torch.optim.Adam


def test_typo_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException, match="nhed"):
        compose_cfg(["model.nhed=4"])


def test_wrong_type_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException, match="nhead"):
        compose_cfg(["model.nhead=four"])


def test_unknown_option_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException, match="optim"):
        compose_cfg(["optim=lion"])


def test_indivisible_heads_are_rejected():
    with pytest.raises(ConfigError, match="not divisible by model.nhead=3"):
        validate(compose_cfg(["model.nhead=3"]))


def test_all_problems_reported_together(tmp_path):
    missing = tmp_path / "nowhere"
    cfg = compose_cfg(["model.dropout=1.5", "data.bptt=0", f"data.local_dir={missing}"])
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    text = str(info.value)
    assert "model.dropout=1.5" in text and "data.bptt=0" in text and str(missing) in text


@pytest.mark.parametrize(
    "override,expected,code",
    [
        (
            "model.nhed=4",
            "model.nhed: model=transformer has no such key; did you mean model.nhead?",
            2,
        ),
        ("model.nhead=3", "not divisible by model.nhead=3", 2),
        ("data.local_dir=/no/such/wikitext", "/no/such/wikitext", 2),
        ("optim=adamx", "optim=adamx: no such option; did you mean adamw?", 2),
        ("device=gpu", "device=gpu: no such option; did you mean cuda?", 2),
        ("model.nhead=[1,", "cannot parse the command line", 2),
    ],
)
def test_cli_errors_are_one_message_without_traceback(tmp_path, override, expected, code):
    proc = run_cli(override, f"hydra.run.dir={tmp_path / 'run'}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == code
    assert expected in output
    assert "Traceback" not in output


def test_cli_help_lists_groups_and_cfg_prints_config():
    help_text = run_cli("--help").stdout
    for line in (
        "model: gpt, lstm, transformer",
        "optim: adamw, sgd",
        "scheduler: constant, cosine, linear, plateau, step, wsd",
        "device: auto, cpu, cuda",
        "data/tokenizer: basic_english, bpe, whitespace_eos",
    ):
        assert line in help_text
    job = run_cli("model.nhead=4", "--cfg", "job").stdout
    assert "nhead: 4" in job and "_target_: torch.optim.SGD" in job


def test_the_command_line_is_checked_whole_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run_cli(
        "-m",
        "model.nhed=4",  # unknown key
        "lr=0.1",  # a leaf under no parent
        "model.nlayers=two",  # wrong type
        "model.dropout=0.1,1.5",  # the sweep's second value is out of range
        "optim.lr=-1",
        "data.eval_batch_size=0",
        "trainer.epochs=-1",
        "+model.d_model=8",  # adding a key that exists
        "~trainer.nothing",
        f"hydra.sweep.dir={blocker / 'sweep'}",
    )
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0] == "lmx: invalid config:"
    for expected in (
        "  - model.nhed: model=transformer has no such key; did you mean model.nhead? (its keys: "
        "d_model, nhead, d_hid, nlayers, dropout, tie_weights, max_len, norm_first, activation, "
        "attn_dropout, head, cutoffs, div_value, adaptive_input, fused_loss, sparse_embedding)",
        "  - lr: no such config key; did you mean optim.lr?",
        "  - model.nlayers=two: Value 'two' of type 'str' could not be converted to Integer",
        "  - model.dropout=1.5 must be in [0, 1)",
        "  - optim.lr=-1.0 must be > 0",
        "  - data.eval_batch_size=0 must be >= 1",
        "  - trainer.epochs=-1 must be >= 0",
        "  - +model.d_model: model.d_model is already in the config; set it with model.d_model=...",
        "  - ~trainer.nothing: there is no trainer.nothing to delete",
        f"  - hydra.sweep.dir={blocker / 'sweep'}: {blocker} is a file, so the run dir cannot "
        "be created",
    ):
        assert any(line.startswith(expected) for line in lines), expected


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["-m", "a=1", "--cfg", "job", "b=2"], ["a=1", "b=2"]),
        (["--info", "defaults", "a=1"], ["a=1"]),
        (["--package", "model", "a=1"], ["a=1"]),
        (["--help"], None),
        (["--config-name", "other", "a=1"], None),
    ],
)
def test_which_arguments_the_check_reads(argv, expected):
    assert overrides_of(argv) == expected


@pytest.mark.parametrize(
    "override,expected",
    [
        ("+trainer.no_such_key=1", "trainer.no_such_key: no component reads this key"),
        (
            "+model.nheads=4",
            "model.nheads: no component reads this key, so it would have no "
            "effect; did you mean model.nhead?",
        ),  # fmt: skip
        ("++data.batchsize=4", "data.batchsize: no component reads this key"),
    ],
)
def test_an_added_key_that_nothing_reads_is_refused_before_any_work(tmp_path, override, expected):
    proc = run_cli(override, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and expected in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("key", ["data.bptt", "data.batch_size"])
def test_a_bad_data_size_is_one_problem_not_also_its_dependents(key):
    from lmx.config.rules import config_problems

    assert config_problems(compose_cfg([f"{key}=0"])) == [f"{key}=0 must be >= 1"]


def test_a_command_line_that_would_write_nowhere_or_ignore_a_setting_is_refused(corpus_dir):
    from lmx.config.preflight import check_command_line
    from lmx.config.rules import config_problems

    with pytest.raises(ConfigError, match="hydra.run.dir is empty: give the folder"):
        check_command_line(["hydra.run.dir="])
    with pytest.raises(ConfigError) as err:
        check_command_line([f"data.local_dir={corpus_dir}", "data.hub_config=wikitext-2-raw-v1",
                            "data.hub_path=x/y"])  # fmt: skip
    for key in ("data.hub_config=wikitext-2-raw-v1", "data.hub_path=x/y"):
        assert f"{key}: has no effect with data.local_dir" in str(err.value)
    check_command_line(["data.hub_config=wikitext-2-raw-v1"])  # from the Hub: it takes effect
    given = corpus_dir / "train.txt"
    assert config_problems(compose_cfg([f"data.local_dir={given}"])) == [
        f"data.local_dir={given} is a file; give the folder that holds train.txt, valid.txt "
        f"and test.txt ({corpus_dir}?)"
    ]


def test_keys_for_an_optimizer_or_scheduler_constructor_may_be_added():
    from omegaconf import OmegaConf

    from lmx.config.rules import config_problems

    cfg = compose_cfg(["optim._target_=torch.optim.RMSprop", "+optim.alpha=0.9"])
    assert config_problems(cfg) == []
    # The same check runs on a config built in Python, as Hydra's `+key=` builds it.
    OmegaConf.update(cfg, "trainer.max_stepz", 100, force_add=True)
    assert config_problems(cfg) == [
        "trainer.max_stepz: no component reads this key, so it would have no effect; did you "
        "mean trainer.max_steps?"
    ]
    assert OmegaConf.select(cfg, "optim.alpha") == 0.9


def test_sparse_adam_is_refused_at_preflight(tmp_path):
    proc = run_cli("optim._target_=torch.optim.SparseAdam", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert "optim._target_=torch.optim.SparseAdam takes sparse gradients only" in proc.stderr


def test_fp16_needs_cuda(monkeypatch):
    import torch

    from lmx.config.rules import config_problems
    from lmx.runtime.device import resolve_device

    problems = config_problems(compose_cfg(["device=cpu", "device.precision=fp16"]))
    assert any(p.startswith("device.precision=fp16 needs a CUDA device") for p in problems)
    # device=auto on a machine without a GPU: refused when the device is resolved
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_cfg(["device.precision=fp16"])
    assert config_problems(cfg) == []
    with pytest.raises(ConfigError, match="device.precision=bf16"):
        resolve_device(cfg.device)
    # a CUDA device asked for where there is none: advice that works in every command
    with pytest.raises(ConfigError, match="no CUDA device; set device.type=cpu or device.type"):
        resolve_device(compose_cfg(["device=cuda"]).device)


def test_declared_dependency_floors_cover_what_the_code_calls():
    # torch.is_autocast_enabled(device_type), torch.get_autocast_dtype and fused AdamW on CPU
    # arrived in torch 2.4; tokenizers' encode_batch_fast in 0.21.
    import tomllib
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((config_dir().parent / "pyproject.toml").read_text())["project"]
    floors = {}
    for line in project["dependencies"]:
        req = Requirement(line)
        lows = [Version(s.version) for s in req.specifier if s.operator == ">="]
        floors[req.name] = max(lows) if lows else None
    assert floors["torch"] >= Version("2.4")
    assert floors["tokenizers"] >= Version("0.21")
    assert floors["hydra-core"] >= Version("1.3") and floors["omegaconf"] >= Version("2.3")


def test_a_negative_min_frequency_is_refused():
    # tokenizers would fail deep inside its trainer; the one-pass route would read it as 0
    with pytest.raises(ConfigError, match=r"data.tokenizer.min_frequency=-1 must be >= 0"):
        validate(compose_cfg(["data.tokenizer.min_frequency=-1"]))


def test_list_elements_are_keys_to_the_checks():
    from lmx.config.preflight import check_command_line, dotlist_problems

    check_command_line(["optim=adamw", "optim.betas.0=0.8"])  # raises on any problem
    with pytest.raises(ConfigError, match=r"optim\.betas\.0=x"):
        check_command_line(["optim=adamw", "optim.betas.0=x"])
    cfg = compose_cfg(["optim=adamw"])  # a saved config, as evaluate and generate load it
    problems = dotlist_problems(cfg, ["optim.betas.0=0.8", "+optim.foo=1"])
    assert problems == ["+optim.foo: adding or deleting keys of a saved config is not supported"]
    assert cfg.optim.betas[0] == 0.8


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (
            ["trainer.ema.start_step=100"],
            "trainer.ema.start_step=100 has no effect without trainer.ema.decay",
        ),
        (
            ["trainer.early_stop.min_delta=0.01"],
            "trainer.early_stop.min_delta=0.01 has no effect without trainer.early_stop.patience",
        ),
        (["trainer.samples=-1"], "trainer.samples=-1 must be >= 0"),
        (["trainer.seed=-1"], "trainer.seed=-1 must be in [0, 2**32 - 1]"),
        (["trainer.seed=4294967296"], "trainer.seed=4294967296 must be in [0, 2**32 - 1]"),
        (
            ["trainer.epochs=0", "trainer.max_steps=5"],
            "trainer.max_steps=5 has no effect with trainer.epochs=0 (a run that trains nothing "
            "and scores the initial model)",
        ),
        (
            ["trainer.epochs=0", "trainer.max_time=1h"],
            "trainer.max_time=1h has no effect with trainer.epochs=0 (a run that trains nothing "
            "and scores the initial model)",
        ),
        (
            ["trainer.samples=2", "trainer.tensorboard=false"],
            "trainer.samples=2 writes to TensorBoard's Text tab: it needs trainer.tensorboard=true",
        ),
    ],
)
def test_a_setting_that_would_have_no_effect_is_refused(overrides, expected):
    from lmx.config.rules import config_problems

    assert expected in config_problems(compose_cfg(overrides))
    # each with what it needs is accepted
    needs = ["trainer.ema.decay=0.9", "trainer.ema.start_step=100", "trainer.samples=2",
             "trainer.early_stop.patience=2", "trainer.early_stop.min_delta=0.01",
             "trainer.seed=4294967295", "trainer.max_steps=5", "trainer.max_time=1h"]  # fmt: skip
    assert config_problems(compose_cfg(needs)) == []


def test_a_presets_key_that_the_chosen_model_lacks_is_one_line(tmp_path):
    proc = run_cli("experiment=smoke", "model=lstm", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[1] == (
        "  - experiment=smoke sets model.d_model, which this config does not have "
        "(Key 'd_model' not in 'LSTMConfig')"
    )


def test_a_presets_value_of_the_wrong_type_is_one_line():
    from lmx.config.compose import composition_error

    text = ("In 'experiment/x': ValidationError raised while composing config:\nValue 'two' of "
            "type 'str' could not be converted to Integer\n    full_key: model.nhead\n"
            "    object_type=TransformerConfig")  # fmt: skip
    assert composition_error(text) == (
        "experiment=x sets model.nhead: Value 'two' of type 'str' could not be converted to Integer"
    )
