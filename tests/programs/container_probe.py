"""A program run inside a container by the real pipeline, to see what the container allows.

It needs only Python's standard library (the container cannot see this file: the test
passes its source as a config parameter, `python3 -c <source> MODE ARG`).

- `isolation ARG`: tries what the contract forbids and writes what happened to
  `$WORKFLOW_OUTPUT_DIR/science/probe.json`: appending to every input and to the
  manifest, creating a file in input/ and config/, whether each host path in the JSON
  list ARG exists, the network interfaces, a TCP connection to ARG's `tcp` address.
- `symlink`: leaves a symlink to /etc/passwd among its science products.
- `wrong-dir`: writes its science product to `$WORKFLOW_DIR/science/` (not the output
  directory).
- `allocate MB`: touches MB megabytes of memory for 3 s (the batch system samples it
  every second), then writes a product.
- `hold MB`: touches MB megabytes, ignores SIGTERM and sleeps (to be cancelled).
- Hostile modes, ARG a JSON object with a host directory `dir` and a host file `file`
  (paths the container cannot see; its links name them all the same):
  `plant-logs` leaves a software log, links the run's log directory for its failed
  attempt (`logs/<step>-attempt-1`) to `dir` and the next attempt's log to `file`, then
  fails; `swap-log` writes a product and replaces its own attempt log by a link to
  `file`; `link-output` replaces `$WORKFLOW_OUTPUT_DIR` by a link to `dir`.
- `ok`: writes one science product.
"""

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path


def attempt(action):
    """Run `action`; return 'allowed' or the OSError's errno name."""
    try:
        action()
    except OSError as exc:
        return f"refused: {os.strerror(exc.errno) if exc.errno else exc}"
    return "allowed"


def append(path):
    def action():
        with open(path, "ab") as handle:
            handle.write(b"tampered")

    return action


def isolation(arg):
    probe = json.loads(arg)
    manifest_path = os.environ["WORKFLOW_MANIFEST"]
    manifest = json.loads(Path(manifest_path).read_text())
    root = Path(os.environ["WORKFLOW_DIR"])
    seen = {
        "inputs": {item["path"]: attempt(append(item["path"])) for item in manifest["inputs"]},
        "manifest": attempt(append(manifest_path)),
        "new_input": attempt(lambda: (root / "input" / "new.txt").write_text("x")),
        "new_config": attempt(lambda: (root / "config" / "new.txt").write_text("x")),
        "host_paths": {path: os.path.exists(path) for path in probe["host_paths"]},
        "interfaces": sorted(name for _, name in socket.if_nameindex()),
        "tcp": attempt(lambda: socket.create_connection(tuple(probe["tcp"]), timeout=3).close()),
        "workflow_dir": str(root),
        "root_listing": sorted(os.listdir("/")),
        "workflow_listing": sorted(os.listdir(root)),
        "environment": sorted(os.environ),
    }
    out = Path(os.environ["WORKFLOW_OUTPUT_DIR"]) / "science"
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(seen, indent=1, sort_keys=True))


def hostile(mode, host, out):
    """Plant what a hostile step program could, to make the manager reach the host."""
    step = json.loads(Path(os.environ["WORKFLOW_MANIFEST"]).read_text())["step"]
    logs = Path(os.environ["WORKFLOW_DIR"]) / "logs"
    if mode == "plant-logs":
        (out / "logs").mkdir(parents=True, exist_ok=True)
        (out / "logs" / "tool.log").write_text("the software's own log")
        os.symlink(host["dir"], logs / f"{step}-attempt-1")
        os.symlink(host["file"], logs / f"{step}-attempt-2.log")
        sys.exit(1)
    if mode == "swap-log":
        (out / "science").mkdir(parents=True, exist_ok=True)
        (out / "science" / "map.fits").write_bytes(b"SIMPLE")
        log = logs / f"{step}-attempt-1.log"
        os.unlink(log)
        os.symlink(host["file"], log)
    elif mode == "link-output":
        for entry in list(out.iterdir()):
            entry.rmdir()
        out.rmdir()
        os.symlink(host["dir"], out)


def main():
    mode, arg = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
    out = Path(os.environ["WORKFLOW_OUTPUT_DIR"])
    if mode == "isolation":
        isolation(arg)
    elif mode == "symlink":
        (out / "science").mkdir(parents=True, exist_ok=True)
        (out / "science" / "map.fits").write_bytes(b"SIMPLE")
        os.symlink("/etc/passwd", out / "science" / "passwd.fits")
    elif mode == "wrong-dir":
        science = Path(os.environ["WORKFLOW_DIR"]) / "science"
        science.mkdir(parents=True, exist_ok=True)
        (science / "map.fits").write_bytes(b"SIMPLE")
    elif mode in ("plant-logs", "swap-log", "link-output"):
        hostile(mode, json.loads(arg), out)
    elif mode == "ok":
        (out / "science").mkdir(parents=True, exist_ok=True)
        (out / "science" / "ok.txt").write_text("ok")
    elif mode == "hold":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        block = bytearray(int(arg.split(":")[0]) << 20)
        block[:: 1 << 12] = b"x" * len(block[:: 1 << 12])
        print("holding", flush=True)
        time.sleep(3600)
    elif mode == "allocate":
        block = bytearray(int(arg) << 20)
        block[:: 1 << 12] = b"x" * len(block[:: 1 << 12])
        (out / "science").mkdir(parents=True, exist_ok=True)
        time.sleep(3)
        (out / "science" / "allocated.txt").write_text(arg)
    else:
        sys.exit(f"unknown mode {mode!r}")


main()
