"""What runs the runs: building a model by name (models.py), the run's files (checkpoint.py), the device and
number format (hardware.py), several processes (distributed.py), stopping on a signal (stop_signals.py), what runs
print and write for people (report.py), and how the benchmarks measure (measure.py, official_block.py)."""
