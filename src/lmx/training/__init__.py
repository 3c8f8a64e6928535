"""Training: the loop (loop.py) and where it stands (state.py), one optimizer step (step.py),
when training ends (budget.py), the weight average (averaging.py), what a checkpoint holds
(checkpoint.py) and resuming from one (resume.py), building the objects a run needs from its
config (build.py), optimizers and schedules (optim.py, schedules.py), Ctrl-C and SIGTERM
(signals.py), and what a run reports as it goes (logs.py)."""
