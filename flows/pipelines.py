"""Deployment entrypoint of the pipelines: `flows/pipelines.py:<pipeline>`.

Prefect registers a deployment under the name of the flow its entrypoint names. Every
attribute of this module is the pipeline flow under that pipeline's name (`flow_for`),
so a pipeline's deployment runs, `ccat-wm run`, schedules and triggers all appear under
one flow named after the pipeline. Pipeline names are identifiers (letters, digits,
`-`, `_`; checked by `ccat-wm apply`), so they are valid attribute paths here.
"""

from __future__ import annotations

from typing import Any

from prefect import Flow

from flows.pipeline import flow_for


def __getattr__(name: str) -> Flow[..., Any]:
    if name.startswith("__"):
        raise AttributeError(name)
    return flow_for(name)
