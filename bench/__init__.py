"""Benchmarks: `python -m bench [name ...]` (or `make bench`) writes one JSON file
per benchmark under bench/results/."""
