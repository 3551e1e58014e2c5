"""Synthetic CHAI-like observations for demos, tests and benchmarks."""
