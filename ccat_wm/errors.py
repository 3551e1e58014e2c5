"""The one error hierarchy of the workflow manager.

Every message names the object, the bad value, what was expected and, where there is
one, a next step. Messages never contain environment values or passwords.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError, SQLAlchemyError


class CcatWmError(Exception):
    """Base of every error the workflow manager reports to a user."""


class ConfigurationError(CcatWmError):
    """Settings or a processing location are unusable as given."""


class DatabaseError(CcatWmError):
    """The ops DB cannot be reached, started or migrated."""


class SpecError(CcatWmError):
    """A pipeline spec file is invalid; carries every problem found, each with its place."""

    def __init__(self, problems: Sequence[str]) -> None:
        """Keep all problems; the message lists them one per line."""
        self.problems = list(problems)
        count = len(self.problems)
        head = (
            f"{count} problem{'s' if count != 1 else ''} in the pipeline spec; nothing was written"
        )
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


class SimulationError(CcatWmError):
    """A simulation request cannot be served (bad option or missing archive location)."""


class DeployError(CcatWmError):
    """Pipelines cannot be deployed to Prefect as they stand (or Prefect refused them)."""


def describe(exc: BaseException) -> str:
    """Say in one line what went wrong, without SQL, parameters or environment values.

    Our own errors are already written for a person. A database error keeps only the
    server's first line (SQLAlchemy's text holds the whole statement and its parameters).
    """
    if isinstance(exc, CcatWmError):
        return str(exc)
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        text = str(exc.orig).strip()
        first = text.splitlines()[0] if text else ""
        return f"database error ({type(exc.orig).__name__}): {first}"[:500]
    if isinstance(exc, SQLAlchemyError):
        return f"database error ({type(exc).__name__})"
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"unexpected {type(exc).__name__}: {first}"[:500]
