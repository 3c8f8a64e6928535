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

# group -> option -> its schema: the options whose keys differ from one another
GROUP_SCHEMAS: dict[str, dict[str, type]] = {
    "model": MODEL_FAMILIES,
    "optim": {"sgd": SGDConfig, "adamw": AdamWConfig},
    "scheduler": {"step": StepLRConfig, "cosine": WarmupCosineConfig,
                  "constant": ConstantLRConfig, "linear": WarmupLinearConfig,
                  "wsd": WSDConfig, "plateau": PlateauConfig},
}  # fmt: skip


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, options in GROUP_SCHEMAS.items():
        for name, schema in options.items():
            cs.store(group=f"schema/{group}", name=name, node=schema)
