"""Runs on disk: how each ended (status.py), sweeps that survive failures and resume
(sweep.py), how a run dir is named (naming.py), and `lmx report`'s parts: the runs read with
their settings and data fingerprints (collect.py), pooled over seeds (groups.py), as tables
(table.py) and figures (plots.py)."""
