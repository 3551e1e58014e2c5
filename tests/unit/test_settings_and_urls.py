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


@pytest.mark.parametrize(
    ("tag", "major"), [("1.4.0", 1), ("v2.0.1-rc1", 2), ("10", 10), ("3.1", 3)]
)
def test_major_version_of_tags(tag: str, major: int) -> None:
    assert parse_major(tag) == major


def test_non_semantic_tag_is_refused() -> None:
    with pytest.raises(ValueError, match="version tag 'latest' is not a semantic version"):
        parse_major("latest")
