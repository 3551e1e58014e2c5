"""Prefect flows: one per pipeline, fanned out over sub-groups (built on the execution issue).

Flows are thin: they call the domain logic in `ccat_wm` and add retries, concurrency,
naming and logging.
"""
