"""Runs on disk: how each ended (status.py), sweeps that survive failures and resume
(sweep.py), and the table that compares runs (table.py, behind `python -m lmx.report`)."""
