"""Benchmarks: `python -m bench.<name> [--quick]`. Each prints its figures; the last line is one JSON object."""
