"""Settings from the environment and ops DB URLs as users write them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccat_wm.db import display_url, normalize_db_url
from ccat_wm.errors import ConfigurationError
from ccat_wm.settings import Settings
from ccat_wm.spec.versions import parse_major


def test_plain_postgresql_url_gets_the_psycopg3_driver() -> None:
    url = normalize_db_url("postgresql://ops:s3cret@db.example:5432/ccat_ops")
    assert url.drivername == "postgresql+psycopg"
    assert url.database == "ccat_ops"
    assert "s3cret" not in display_url(url)


@pytest.mark.parametrize("raw", ["mysql://root@localhost/x", "sqlite:///x.db"])
def test_other_databases_are_refused_without_echoing_the_url(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="expected postgresql://") as info:
        normalize_db_url(raw)
    assert "root@" not in str(info.value)


def test_settings_read_the_deployment_variable_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CCAT_WM_HOME", str(tmp_path))
    monkeypatch.setenv("CCAT_OPS_DB_URL", "")
    monkeypatch.setenv("SLURM_PARTITION", "astro")
    monkeypatch.delenv("PIPELINE_BASE_DIR", raising=False)
    settings = Settings()
    assert settings.ops_db_url is None
    assert settings.slurm_partition == "astro"
    assert settings.runs_dir == tmp_path / "pipelines"


UNDOCUMENTED = {
    "HOME": "/tmp/elsewhere",
    "FLOW_WORKERS": "3",
    "MAX_TASK_RUNS": "11",
    "OPS_DB_URL": "postgresql://wrong@nowhere/x",
    "SIF_CACHE": "/tmp/sif",
    "PIPELINE_BASE": "/tmp/base",
}


def test_settings_ignore_undocumented_names_and_default_home_is_under_local_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`HOME`, `FLOW_WORKERS` and friends (the field names) must not be read as settings."""
    for name in ("CCAT_WM_HOME", "CCAT_OPS_DB_URL", "CCAT_WM_FLOW_WORKERS",
                 "CCAT_WM_MAX_TASK_RUNS", "PIPELINE_BASE_DIR", "SIF_CACHE_DIR"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    for name, value in UNDOCUMENTED.items():
        monkeypatch.setenv(name, value)
    # pydantic-settings also matches field names case-insensitively: try those too.
    for name in ("home", "flow_workers", "max_task_runs", "ops_db_url"):
        monkeypatch.setenv(name, "42" if "workers" in name or "runs" in name else "/tmp/x")
    settings = Settings()
    assert settings.home == Path("/tmp/elsewhere/.local/share/ccat-wm")  # ~ is expanded
    assert settings.flow_workers == 16
    assert settings.max_task_runs == 1000
    assert settings.ops_db_url is None
    assert settings.sif_cache_dir is None
    assert settings.runs_dir == settings.home / "pipelines"


def test_documented_names_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CCAT_WM_HOME", str(tmp_path))
    monkeypatch.setenv("CCAT_WM_FLOW_WORKERS", "3")
    monkeypatch.setenv("PIPELINE_BASE_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("SIF_CACHE_DIR", str(tmp_path / "sif"))
    settings = Settings()
    assert (settings.home, settings.flow_workers) == (tmp_path, 3)
    assert settings.runs_dir == tmp_path / "runs"
    assert settings.sif_cache_dir == tmp_path / "sif"


def test_clocks_are_settings_with_their_defaults_and_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The liveness threshold and the slot lease are settings (tests set them short); a
    value Prefect cannot honour is refused at start, naming the variable."""
    for name in ("CCAT_WM_LIVENESS_S", "CCAT_WM_SLOT_LEASE_S"):
        monkeypatch.delenv(name, raising=False)
    assert (Settings().liveness_s, Settings().slot_lease_s) == (90.0, 60.0)
    monkeypatch.setenv("CCAT_WM_LIVENESS_S", "45")
    monkeypatch.setenv("CCAT_WM_SLOT_LEASE_S", "120")
    assert (Settings().liveness_s, Settings().slot_lease_s) == (45.0, 120.0)
    for name, value in (("CCAT_WM_LIVENESS_S", "30"), ("CCAT_WM_SLOT_LEASE_S", "10")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=name):
            Settings()
        monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("tag", "major"), [("1.4.0", 1), ("v2.0.1-rc1", 2), ("10", 10), ("3.1", 3)]
)
def test_major_version_of_tags(tag: str, major: int) -> None:
    assert parse_major(tag) == major


def test_non_semantic_tag_is_refused() -> None:
    with pytest.raises(ValueError, match="version tag 'latest' is not a semantic version"):
        parse_major("latest")
