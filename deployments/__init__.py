"""Rendering of pipelines into Prefect deployments (`prefect.yaml`).

Deployments refer to flows by entrypoint string.
"""
