"""Benchmarks: each prints one JSON object per line. Run them all with ``make bench``."""
