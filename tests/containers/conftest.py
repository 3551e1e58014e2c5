"""The example software's OCI image, built on this host (cached between runs)."""

from __future__ import annotations

import pytest

from infra.example_image import BuiltImage, build


@pytest.fixture(scope="session")
def example_image() -> BuiltImage:
    """Build the example image unless a build of the same inputs exists; podman's digest."""
    return build()
