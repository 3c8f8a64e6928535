"""The run config: typed schemas (schema.py) in Hydra's store (store.py), the rules types
cannot express (rules.py), the command-line check before Hydra runs (preflight.py), composing
from Python (compose.py), and the names older lmx versions wrote (legacy.py)."""
