"""Benchmarks: `make bench`, and `r3 bench learn` (the learning experiment)."""
