"""ccat-wm's Prefect defaults: real Prefect settings, with the user's values winning."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prefect.settings import Settings

from ccat_wm.prefect_settings import SERVER_DEFAULTS, apply_prefect_defaults


def test_every_default_is_a_prefect_setting_that_takes_effect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A misspelt name would be ignored by Prefect without a word: read each one back."""
    env: dict[str, str] = {}
    apply_prefect_defaults(env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    services = Settings().server.services
    assert services.task_run_recorder.batch_size == 200
    assert services.task_run_recorder.read_batch_size == 50
    assert services.task_run_recorder.flush_interval == 1
    assert services.event_persister.batch_size == 200
    assert services.event_persister.read_batch_size == 50
    assert services.event_persister.flush_interval == 1
    assert Settings().server.ephemeral.startup_timeout_seconds == 120
    assert Settings().server.analytics_enabled is False
    assert set(SERVER_DEFAULTS) < set(env)


def test_a_value_the_user_set_wins() -> None:
    env = {"PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "7"}
    apply_prefect_defaults(env)
    assert env["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"] == "7"
    assert env["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE"] == "200"


def test_the_operators_guide_configures_its_server_with_the_same_values() -> None:
    guide = (Path(__file__).parents[2] / "docs" / "operators-guide.md").read_text()
    exported = dict(re.findall(r"\b(PREFECT_SERVER_(?:SERVICES|CONCURRENCY)_\w+)=(\S+)", guide))
    assert exported == SERVER_DEFAULTS
