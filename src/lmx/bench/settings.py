"""What the bench compares: the three settings and the speed levers, as lmx overrides."""

SETTINGS = {  # name -> lmx overrides (None: the tutorial's own loop)
    "tutorial_loop": None,
    "lmx_fp32": ["experiment=seed_tutorial"],
    "lmx_seed_fast": ["experiment=seed_fast"],
}
# The precision of each setting's matmuls: the peak its MFU is taken against.
PRECISION = {"tutorial_loop": "fp32", "lmx_fp32": "fp32", "lmx_seed_fast": "bf16"}
# The speed levers one at a time, each on top of the previous row (train and eval speed only).
LEVERS = {
    "fp32, plain loss, one eval window, glibc's malloc defaults": [
        "experiment=seed_tutorial",
        "model.fused_loss=false",
        "trainer.eval_tokens_per_forward=1",
        "device.keep_heap=false",
    ],
    "+ freed memory kept in the heap": [
        "experiment=seed_tutorial",
        "model.fused_loss=false",
        "trainer.eval_tokens_per_forward=1",
    ],
    "+ fused decoder loss": ["experiment=seed_tutorial", "trainer.eval_tokens_per_forward=1"],
    "+ stacked eval windows": ["experiment=seed_tutorial"],
    "+ bf16 autocast": ["experiment=seed_tutorial", "device.precision=bf16"],
    "+ sparse embedding gradient (= seed_fast)": ["experiment=seed_fast"],
    # inductor cannot compile a sparse gradient: compile is measured on the dense bf16 row
    "bf16 + torch.compile (dense embedding)": [
        "experiment=seed_tutorial",
        "device.precision=bf16",
        "device.compile=true",
    ],
}
RESULT_TAG = "LMX_BENCH_RESULT "  # marks a worker process's result line on its stdout
