"""Which environment values never enter a record (run snapshots, commands, provenance).

Three rules, each enough on its own:

- a variable whose name contains `PASS`, `PWD`, `SECRET`, `TOKEN`, `KEY`, `CREDENTIAL`,
  `AUTH` or `PRIVATE` anywhere, in any case (`PGPASSWORD`, `MYSQL_PWD`, `APITOKEN`,
  `SECRETKEY`, `AWS_SECRETACCESSKEY`): its value is withheld; only its name is recorded;
- a value that holds a password inside a URL (`scheme://user:password@host`) or a
  libpq-style DSN (`... password=...`): the value is recorded with the password replaced
  by `<withheld>`, and the name is listed as withheld too;
- the names a step config lists in `secret_env`: withheld like the first rule.

Over-withholding is the safe side: a variable named `PIPELINE_AUTHOR` is withheld too.
A run that needs a withheld value again (a later attempt, `reproduce`) takes it from the
current config; the record keeps only the name. Migration 0010 applied these rules once
to the records written before them (docs/provenance.md).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping

SECRET_PARTS = ("PASS", "PWD", "SECRET", "TOKEN", "KEY", "CREDENTIAL", "AUTH", "PRIVATE")
"""A variable whose name contains one of these (any case) holds a secret."""
WITHHELD = "<withheld>"
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?=@)")
_DSN_PASSWORD = re.compile(r"(?i)(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^\s']+)")


def is_secret_name(name: str, secret_env: Iterable[str] = ()) -> bool:
    """Return whether an environment variable's name marks its value as a secret."""
    upper = name.upper()
    return any(part in upper for part in SECRET_PARTS) or name in set(secret_env)


def mask_passwords(value: str) -> str:
    """Return `value` with every URL or DSN password replaced by `<withheld>`."""
    masked = _URL_PASSWORD.sub(lambda m: m["head"] + WITHHELD if m["pw"] else m[0], value)
    return _DSN_PASSWORD.sub(lambda m: m["head"] + WITHHELD, masked)


def split_secrets(
    environment: Mapping[str, str], secret_env: Iterable[str] = ()
) -> tuple[dict[str, str], list[str]]:
    """Return the variables as they may be recorded, and the sorted names of the withheld ones.

    A secret-named variable is left out; one whose value holds a password is kept with
    the password masked and is named as withheld as well (its real value comes from the
    current config when a run needs it again).
    """
    names = set(secret_env)
    stored: dict[str, str] = {}
    withheld: list[str] = []
    for name, value in environment.items():
        if is_secret_name(name, names):
            withheld.append(name)
            continue
        masked = mask_passwords(value)
        stored[name] = masked
        if masked != value:
            withheld.append(name)
    return stored, sorted(withheld)


def scrub_command(command: str, secret_env: Iterable[str] = ()) -> str:
    """Apply the rules to a recorded command line (`NAME=value ... argv`), as migration 0010 did."""
    try:
        words = shlex.split(command)
    except ValueError:  # not shell words: mask what can be found in the text
        return mask_passwords(command)
    out = []
    leading = True
    for word in words:
        name, sep, value = word.partition("=")
        if leading and sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            shown = WITHHELD if is_secret_name(name, secret_env) else mask_passwords(value)
            out.append(f"{name}={shown}")
            continue
        leading = False
        out.append(mask_passwords(word))
    return shlex.join(out)
