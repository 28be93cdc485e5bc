"""Benchmarks: each prints its measurements side by side, as ratios, in one run."""
