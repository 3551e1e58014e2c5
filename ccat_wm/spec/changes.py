"""What `apply` reports: one line per object it creates, updates or deletes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Change:
    """One create, update or delete that applying the files makes."""

    action: Literal["create", "update", "delete"]
    """What happens to the object."""
    kind: str
    """Object kind, e.g. `pipeline` or `step`."""
    name: str
    """Object name (`pipeline.step` for steps)."""
    details: tuple[str, ...] = ()
    """For updates: `field: old -> new` per changed field."""

    def render(self) -> str:
        """One line per change, `+` create, `~` update, `-` delete."""
        sign = {"create": "+", "update": "~", "delete": "-"}[self.action]
        tail = f" ({'; '.join(self.details)})" if self.details else ""
        return f"{sign} {self.kind} {self.name}{tail}"


def short_value(value: Any) -> str:
    """Return a value as a change line shows it: its repr, cut at 60 characters."""
    text_value = repr(value.value if hasattr(value, "value") else value)
    return text_value if len(text_value) <= 60 else text_value[:57] + "..."
