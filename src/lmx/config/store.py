"""The schemas in Hydra's ConfigStore, so that a typo or a wrongly typed override fails at
compose time. The YAML options in conf/ extend these entries through their defaults lists."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from lmx.config.schema import (
    MODEL_FAMILIES,
    AdamWConfig,
    ConstantLRConfig,
    PlateauConfig,
    SGDConfig,
    StepLRConfig,
    TrainConfig,
    WarmupCosineConfig,
    WarmupLinearConfig,
    WSDConfig,
)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for name, schema in MODEL_FAMILIES.items():
        cs.store(group="schema/model", name=name, node=schema)
    cs.store(group="schema/optim", name="sgd", node=SGDConfig)
    cs.store(group="schema/optim", name="adamw", node=AdamWConfig)
    cs.store(group="schema/scheduler", name="step", node=StepLRConfig)
    cs.store(group="schema/scheduler", name="cosine", node=WarmupCosineConfig)
    cs.store(group="schema/scheduler", name="constant", node=ConstantLRConfig)
    cs.store(group="schema/scheduler", name="linear", node=WarmupLinearConfig)
    cs.store(group="schema/scheduler", name="wsd", node=WSDConfig)
    cs.store(group="schema/scheduler", name="plateau", node=PlateauConfig)
