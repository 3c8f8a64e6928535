"""What every model family must do alike (model=transformer, lstm, gpt): train with falling
loss, checkpoint, evaluate to the recorded number, generate, resume bit-exactly after a
SIGKILL in mid-epoch, and be checked per family on the command line and in sweeps."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import (
    TINY,
    compose_cfg,
    job_dir,
    run_cli,
    run_module,
    run_python,
    sigkill_after_first_save,
    tiny_overrides,
)
from lmx.evaluate import evaluate_checkpoint
from lmx.generate import generate
from lmx.models.gpt import GPT
from lmx.models.transformer import TransformerLM
from lmx.train import train
from lmx.training.checkpoint import load_checkpoint
from test_resume import RESUMABLE, _metrics, _train_losses, assert_same_run

# Each family at a tiny size: its own keys (the TINY list sizes the transformer).
SIZES = {
    "transformer": [o for o in TINY if o.startswith("model.")],
    "lstm": ["model.emsize=16", "model.nhid=16", "model.nlayers=2"],
    "gpt": ["model.d_model=16", "model.nhead=2", "model.d_hid=32", "model.nlayers=2"],
}
FAMILIES = list(SIZES)


def family_overrides(family, corpus, cache, *extra):
    common = [o for o in tiny_overrides(corpus, cache, *extra) if not o.startswith("model.")]
    return [
        *common,
        f"model={family}",
        *SIZES[family],
        *(e for e in extra if e.startswith("model.")),
    ]


# The adaptive head on the tiny corpus's ~25 word types: a head of 5 ids and two clusters.
ADAPTIVE = ("model.head=adaptive", "model.cutoffs=[5,12]", "model.tie_weights=false")
TIED_INPUT = (*ADAPTIVE, "model.adaptive_input=true")  # the embedding read from the head


@pytest.mark.parametrize(  # and once the adaptive head with its tied adaptive input
    "family,head", [(f, h) for f in FAMILIES for h in ("softmax", "adaptive")] + [("gpt", "input")]
)
def test_every_family_and_head_trains_checkpoints_evaluates_and_generates(
    family, head, corpus_dir, cache_dir, tmp_path
):
    run_dir = tmp_path / "run"
    extra = {"softmax": (), "adaptive": ADAPTIVE, "input": TIED_INPUT}[head]
    args = family_overrides(family, corpus_dir, cache_dir, "trainer.log_interval=1", *extra)
    metrics = train(compose_cfg(args), run_dir)
    losses = [v for _, v in _train_losses(run_dir)]
    assert len(losses) >= 20 and sum(losses[-5:]) < sum(losses[:5])  # falling loss
    assert metrics["status"] == "done" and math.isfinite(metrics["test_ppl"])
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    unique = {t.data_ptr(): t.numel() for t in ckpt.model.values()}  # a tied matrix once
    assert metrics["parameters"] == sum(unique.values())
    test = evaluate_checkpoint(run_dir, "test")
    assert math.isclose(test["ppl"], metrics["test_ppl"], rel_tol=1e-4)
    [text] = generate(run_dir, "the cat", max_new_tokens=12, seed=3)
    assert text.startswith("the cat ") and len(text.split()) == 14
    assert [text] == generate(run_dir, "the cat", max_new_tokens=12, seed=3)


@pytest.mark.parametrize(  # the transformer with its softmax head: in test_resume
    "family,head", [("lstm", "softmax"), ("gpt", "softmax"), ("transformer", "adaptive"),
                    ("lstm", "adaptive"), ("gpt", "adaptive")]
)  # fmt: skip
def test_sigkill_in_mid_epoch_then_resume_is_bit_exact(family, head, corpus_dir, cache_dir,
                                                       tmp_path):  # fmt: skip
    extra = [o for o in RESUMABLE if not o.startswith("model.")]
    extra += ADAPTIVE if head == "adaptive" else ()
    args = family_overrides(family, corpus_dir, cache_dir, *extra, "model.dropout=0.3",
                            "trainer.ema.decay=0.9", "trainer.resume=auto")  # fmt: skip
    proc = run_cli(*args, f"hydra.run.dir={tmp_path / 'full'}")
    assert proc.returncode == 0, proc.stderr[-2000:]

    killed = tmp_path / "killed"
    sigkill_after_first_save(args, killed)
    saved = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert saved.progress["batch"] > 0  # in mid-epoch
    assert (saved.carried is not None) == (family == "lstm")  # the LSTM's state is in it

    proc = run_cli(*args, f"hydra.run.dir={killed}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_run(tmp_path / "full", killed)
    assert _train_losses(killed) == _train_losses(tmp_path / "full")


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_no_output_before_t_depends_on_token_t(positions):
    torch.manual_seed(0)
    models = [
        TransformerLM(40, d_model=16, nhead=2, d_hid=32, nlayers=2, dropout=0.0),
        GPT(40, d_model=16, nhead=2, d_hid=32, nlayers=2, dropout=0.0, positions=positions),
    ]
    ids = torch.randint(0, 40, (2, 12))
    for model in models:
        model.eval()
        before = model(ids)  # logits [2, 12, 40]
        for t in (0, 5, 11):
            changed = ids.clone()
            changed[:, t] = (changed[:, t] + 1) % 40
            after = model(changed)
            torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
            assert not torch.allclose(after[:, t], before[:, t])  # and t itself does change


def test_rotary_attention_scores_depend_only_on_the_offset():
    from lmx.models.gpt import rotary_tables, rotate

    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    cos, sin = rotary_tables(32, 8)

    def score(m, n):
        return (
            rotate(q, cos[m : m + 1], sin[m : m + 1]) * rotate(k, cos[n : n + 1], sin[n : n + 1])
        ).sum()

    torch.testing.assert_close(score(7, 3), score(20, 16))
    torch.testing.assert_close(score(0, 0), (q * k).sum())
    assert not torch.isclose(score(7, 3), score(7, 4))


def test_gpt_uses_gpt2_init_with_scaled_residual_projections():
    torch.manual_seed(0)
    model = GPT(1000, d_model=256, nhead=4, d_hid=1024, nlayers=8, dropout=0.0)
    residual = 0.02 / math.sqrt(2 * 8)
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert model.blocks[3].mlp.proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert model.blocks[0].mlp.fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.decoder.weight is model.embedding.weight and model.decoder.bias is None
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0
    untied = GPT(1000, d_model=32, nhead=4, d_hid=64, nlayers=1, tie_weights=False, bias=False)
    assert untied.decoder.weight is not untied.embedding.weight
    assert untied.blocks[0].ln1.bias is None and untied.blocks[0].attn.qkv.bias is None


def test_a_key_of_another_family_names_the_family_and_its_keys(tmp_path):
    proc = run_cli("model=lstm", "model.nhead=2", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        "model.nhead: model=lstm has no such key; it is a key of model=transformer, model=gpt "
        "(its keys: cell, emsize, nhid, nlayers, dropout, tie_weights, head, cutoffs, "
        "div_value, adaptive_input, fused_loss, sparse_embedding)" in proc.stderr
    )
    proc = run_cli("model=gpt", "model.d_hd=2", f"hydra.run.dir={tmp_path / 'r'}")
    assert "model.d_hd: model=gpt has no such key; did you mean model.d_hid?" in proc.stderr


def test_a_key_of_another_optimizer_or_schedule_names_the_option_that_has_it():
    from lmx.config.preflight import check_command_line
    from lmx.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        check_command_line(["optim.betas=[0.9,0.99]", "scheduler.warmup_steps=5"])
    assert "optim.betas: this optim has no such key; it is a key of optim=adamw" in str(err.value)
    assert ("scheduler.warmup_steps: this scheduler has no such key; it is a key of "
            "scheduler=cosine, scheduler=linear, scheduler=wsd") in str(err.value)  # fmt: skip


def test_a_sweep_checks_each_override_against_every_family_it_meets(tmp_path):
    # model.d_model fits the transformer, the first choice, but not lstm, the second.
    proc = run_cli("-m", "model=transformer,lstm,gpt", "model.d_model=64",
                   f"hydra.sweep.dir={tmp_path / 's'}")  # fmt: skip
    assert proc.returncode == 2 and "model.d_model: model=lstm has no such key" in proc.stderr
    assert "model=gpt has no such key" not in proc.stderr  # gpt has a d_model
    assert not (tmp_path / "s").exists()  # refused before any job ran


def test_a_sweep_over_families_gives_complete_runs_that_report_ranks(corpus_dir, cache_dir,
                                                                     tmp_path):  # fmt: skip
    sweep = tmp_path / "sweep"
    common = [o for o in tiny_overrides(corpus_dir, cache_dir) if not o.startswith("model.")]
    proc = run_cli("-m", *common, "model=transformer,lstm,gpt", "trainer.epochs=1",
                   "trainer.limit_train_batches=6", f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    targets = set()
    for job in ("0", "1", "2"):
        metrics = _metrics(job_dir(sweep, job))
        assert metrics["status"] == "done" and math.isfinite(metrics["test_ppl"])
        config = load_checkpoint(job_dir(sweep, job) / "checkpoints" / "best.pt").config
        targets.add(config["model"]["_target_"])
    assert targets == {"lmx.models.transformer.TransformerLM", "lmx.models.rnn.RNNLM",
                       "lmx.models.gpt.GPT"}  # fmt: skip
    proc = run_module("lmx.report", str(sweep))
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[3:6]]  # under the fingerprint
    assert sorted(row[1] for row in rows) == sorted(FAMILIES)  # the model column names each
    ppls = [float(row[2]) for row in rows]
    assert ppls == sorted(ppls)  # ranked by validation ppl


def test_the_family_speed_benchmark_measures_families_and_heads(corpus_dir, cache_dir, tmp_path):
    out = tmp_path / "speed.json"
    tiny = ["--cutoffs", "5,12", "data.batch_size=4", "data.bptt=8", f"data.cache_dir={cache_dir}"]
    script = ["benchmarks/family_speed.py", "--data", str(corpus_dir), "--steps", "8"]
    proc = run_python(
        *script, "--rounds", "1", "--out", str(out), "--only", "gpt + adaptive", *tiny
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    speeds = json.loads(out.read_text())["speeds"]
    assert list(speeds) == ["transformer + softmax", "gpt + adaptive"]  # with its baseline
    assert all(v[0] > 0 for v in speeds.values()) and "1.00x" in proc.stdout
    proc = run_python("benchmarks/family_speed.py", "--data", str(corpus_dir), "--only", "gpt")
    assert proc.returncode == 2 and "no setting 'gpt'" in proc.stderr


def test_a_sweep_past_the_checked_combinations_says_so(tmp_path):
    proc = run_cli("-m", "model=transformer,lstm,gpt", "optim=sgd,adamw", "device=auto,cpu,cuda",
                   "scheduler=constant,cosine,linear,plateau,step,wsd", "trainer.bogus=1",
                   f"hydra.sweep.dir={tmp_path / 's'}")  # fmt: skip
    assert proc.returncode == 2 and "trainer.bogus" in proc.stderr
    assert (
        "meets 108 combinations of group choices" in proc.stderr and "the first 64" in proc.stderr
    )
