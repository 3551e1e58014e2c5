"""Run ownership: a live owner's lock is held, a dead owner's is free (real PostgreSQL)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ccat_wm.execution.claims import dead_claims, hold_claim

pytestmark = pytest.mark.db


def test_an_owner_is_alive_while_it_holds_its_lock_and_dead_after(engine: Engine) -> None:
    with Session(engine) as session:
        with hold_claim(engine, "flow-a"):
            assert dead_claims(session, ["flow-a", "flow-b"]) == {"flow-b"}
            assert dead_claims(session, ["flow-a"]) == set()  # asking took no lock
        assert dead_claims(session, ["flow-a", "flow-b"]) == {"flow-a", "flow-b"}


def test_the_lock_of_a_killed_process_is_released(engine: Engine) -> None:
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    holder = (
        "import sys, time\n"
        "from sqlalchemy import create_engine\n"
        "from ccat_wm.execution.claims import hold_claim\n"
        "with hold_claim(create_engine(sys.argv[1].replace('postgresql:', 'postgresql+psycopg:', 1)), 'flow-c'):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", holder, url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "held\n"
        with Session(engine) as session:
            assert dead_claims(session, ["flow-c"]) == set()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + 10
    with Session(engine) as session:
        while dead_claims(session, ["flow-c"]) != {"flow-c"}:
            assert time.monotonic() < deadline, "the killed owner still looks alive"
            time.sleep(0.1)
