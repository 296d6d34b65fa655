"""Benchmarks: `python -m bench.<name> [--quick]`; each prints its figures, the last line one JSON object."""
