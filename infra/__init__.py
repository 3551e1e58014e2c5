"""Execution backends (local, SLURM, Kubernetes) and container runtimes.

Sees neither Prefect nor the DB: it gets plain dataclasses.
"""
