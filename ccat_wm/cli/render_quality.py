"""Quality decisions as `plan` shows them: the rejected sub-groups, and what a change flips."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ccat_wm.selection.dimensions import display_key

if TYPE_CHECKING:
    from ccat_wm.gaps.what_if import QaFlip
    from ccat_wm.quality.standing import Rejection

SHOWN = 20
"""Rejected sub-groups listed as text (all of them in --json)."""


def rejected_lines(rejected: Sequence[Rejection]) -> list[str]:
    """Say which sub-groups a quality decision keeps out of downstream steps, and why."""
    if not rejected:
        return []
    lines = [
        "",
        f"rejected by a quality decision ({len(rejected)}; their products feed no downstream "
        "step, `ccat-wm qa accept` overrides):",
    ]
    lines += [
        f"  {r.pipeline}/{r.step}[{display_key(r.sub_group_key)}] run {r.run_id}: "
        f"{r.message} ({r.who})"
        for r in rejected[:SHOWN]
    ]
    if len(rejected) > SHOWN:
        lines.append(f"  ... and {len(rejected) - SHOWN} more (`ccat-wm plan --json`)")
    return lines


def rejected_json(rejected: Sequence[Rejection]) -> list[dict[str, Any]]:
    """Return the rejected sub-groups as JSON records."""
    return [
        {
            "pipeline": r.pipeline, "step": r.step, "sub_group_key": r.sub_group_key,
            "run_id": r.run_id, "source": r.source, "message": r.message,
            "decided_by": r.decided_by,
            "decided_at": r.decided_at.isoformat() if r.decided_at else None,
        }
        for r in rejected
    ]  # fmt: skip


def flip_lines(flips: Sequence[QaFlip]) -> list[str]:
    """Say which sub-groups a change of a quality gate would flip, each way."""
    if not flips:
        return []
    lines = ["", f"the change flips {len(flips)} quality decision(s) (runs are not re-run):"]
    lines += [
        f"  {f.pipeline}/{f.step}[{display_key(f.sub_group_key)}]: "
        + (f"accepted -> rejected ({f.message})" if f.rejected else "rejected -> accepted")
        for f in flips
    ]
    return lines


def flips_json(flips: Sequence[QaFlip]) -> list[dict[str, Any]]:
    """Return the flipped sub-groups as JSON records (`rejected`: after the change)."""
    return [
        {"pipeline": f.pipeline, "step": f.step, "sub_group_key": f.sub_group_key,
         "rejected": f.rejected, "message": f.message}
        for f in flips
    ]  # fmt: skip
