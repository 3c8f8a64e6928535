"""Analysis code, kept out of the library (no library module imports it): the bench driver
behind `python -m lmx.bench` (run.py, workers.py, settings.py, table.py), the tutorial's own
loop as the baseline (tutorial_reference.py), and the consecutive-iterate probe
(iterates.py)."""
