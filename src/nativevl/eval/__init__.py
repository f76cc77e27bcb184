"""Evaluation: held-out splits of the embedded world (and, later, MMMU-style benchmarks)."""
