"""Where a run executes: the device and its precision (device.py), data parallelism under
torchrun (distributed.py), and how a launcher's jobs share the machine (launcher.py)."""
