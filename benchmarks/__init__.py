"""nativevl's benchmarks against transformers on the same weights: `python -m benchmarks --help`."""
