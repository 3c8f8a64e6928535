"""lmx: config-driven Transformer language-model experiments on WikiText-2."""

__version__ = "0.1.0"

# ${lmx_run_name:} in conf/train.yaml's run folders: registered on any import of lmx, so that
# a launcher's worker (submitit, joblib) resolves a job's folder as the first process does.
from lmx.runs.naming import register as _register_run_name  # noqa: E402

_register_run_name()
