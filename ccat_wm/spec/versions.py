"""Version tags of reduction software: parsing the major number that `compatible` needs."""

from __future__ import annotations

import re

_TAG = re.compile(
    r"^v?(?P<major>\d+)(\.(?P<minor>\d+))?(\.(?P<patch>\d+))?([-+.][0-9A-Za-z.+-]*)?$"
)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def parse_major(tag: str) -> int:
    """Return the major version of a tag such as `1.4.0` or `v2.0.1-rc1`.

    Raises ValueError naming the tag when it is not a semantic version.
    """
    match = _TAG.match(tag)
    if match is None:
        raise ValueError(
            f"version tag {tag!r} is not a semantic version; expected e.g. 1.4.0 or v1.4.0"
        )
    return int(match.group("major"))
