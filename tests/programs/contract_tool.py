"""A reduction program for tests: follows (or breaks, on request) the container contract.

Usage: contract_tool.py --mode MODE [--arg VALUE] [--fail-key TEXT] [--track DIR] [--sleep S]
                        [--once 0|1] [--fixed FILE] [--hold-key TEXT]

`--fail-key TEXT` fails sub-groups whose key contains TEXT (exit code 3), until the file
`--fixed` names exists (an operator's fix, for tests of `ccat-wm retry`). `--hold-key TEXT`
holds sub-groups whose key contains TEXT until the file `--arg` exists (one sub-group kept
in flight while the others go on).

Modes: ok; outside, symlink, bad-sidecar, fifo (a named pipe), nan-sidecar, link-input (a
hard link to its first input as a product) (contract violations); tamper-write,
tamper-append, tamper-truncate, tamper-chmod, tamper-recreate (try to change every input
in place, then behave: what a buggy program might do to the archive); leave-writers (leaves a
daemon and a child in its process group that append to its product a second after it
exits; their command lines name the product); qa (`--arg TEXT=VALUE`: the sub-groups whose
key holds TEXT report the QA metric `value` = VALUE, the others 1.0); hog (holds `--arg` MB for five seconds); wait (waits until the file `--arg` exists,
at most ten minutes, then behaves: a run held in flight for as long as a test needs). With `--once 1` (and `--track`), the mode and the sleep apply to the run's
first attempt only: later attempts behave (to test retries).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="ok")
    parser.add_argument("--arg", default="")
    parser.add_argument("--fail-key", default="")
    parser.add_argument("--track", default="")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--once", type=int, default=0)
    parser.add_argument("--fixed", default="")
    parser.add_argument("--hold-key", default="")
    args = parser.parse_args()
    manifest = json.loads(Path(os.environ["WORKFLOW_MANIFEST"]).read_text())
    out = Path(os.environ["WORKFLOW_OUTPUT_DIR"])
    key = manifest["sub_group_key"]
    if args.once:
        marker = Path(args.track) / f"attempted-{manifest['run_id']}"
        if marker.exists():
            args.mode, args.sleep = "ok", 0.0
        marker.touch()
    if args.mode == "hog":
        hog = bytearray(int(args.arg) * 1024 * 1024)
        for i in range(0, len(hog), 4096):
            hog[i] = 1
        time.sleep(5)
    if args.track:
        with open(Path(args.track) / "events.log", "a") as log:
            log.write(f"start {time.time()} {os.getpid()} {key}\n")
    print(f"tool {args.mode} for {key}", flush=True)
    if args.mode == "wait" or (args.hold_key and args.hold_key in key):
        deadline = time.monotonic() + 600
        while not Path(args.arg).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    if args.sleep:
        time.sleep(args.sleep)
        print(f"woke up after {args.sleep} s", flush=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "logs" / "tool.log").write_text(f"mode {args.mode} key {key}\n")
    fixed = bool(args.fixed) and Path(args.fixed).exists()
    if args.fail_key and args.fail_key in key and not fixed:
        print("boom: failing on purpose", file=sys.stderr, flush=True)
        return 3
    for kind in ("science", "qa"):
        (out / kind).mkdir(parents=True, exist_ok=True)
    payload = {"argv": sys.argv[1:], "inputs": manifest["inputs"], "run_id": manifest["run_id"]}
    science = out / "science" / "result.json"
    science.write_text(json.dumps(payload, sort_keys=True))
    (out / "science" / "result.json.meta.json").write_text(
        json.dumps({"inputs": len(manifest["inputs"])})
    )
    value = 1.0
    if args.mode == "qa":  # --arg TEXT=VALUE: sub-groups whose key holds TEXT report VALUE
        text, _, reported = args.arg.partition("=")
        value = float(reported) if text in key else value
    (out / "qa" / "metric.json").write_text(json.dumps({"value": value, "note": "a metric"}))
    if args.mode == "outside":
        (out / "stray.txt").write_text("not allowed at the top of a final step")
    elif args.mode == "symlink":
        (out / "science" / "escape").symlink_to("/etc/hostname")
    elif args.mode == "bad-sidecar":
        (out / "qa" / "metric.json.meta.json").write_text("[1, 2")
    elif args.mode == "fifo":
        os.mkfifo(out / "science" / "pipe.fits")
    elif args.mode == "nan-sidecar":
        (out / "qa" / "metric.json.meta.json").write_text('{"rms": NaN}')
    elif args.mode == "link-input":
        os.link(Path(manifest["inputs"][0]["path"]), out / "science" / "raw-copy.npz")
    elif args.mode == "leave-writers":  # one daemon (own session), one child in our group
        rewrite = f"import time; time.sleep(1); open({str(science)!r}, 'a').write('late')"
        subprocess.Popen([sys.executable, "-c", rewrite], start_new_session=True)
        subprocess.Popen([sys.executable, "-c", rewrite])
    if args.mode.startswith("tamper-"):
        for item in manifest["inputs"]:
            tamper(Path(item["path"]), args.mode.removeprefix("tamper-"))
    if args.track:
        with open(Path(args.track) / "events.log", "a") as log:
            log.write(f"end {time.time()} {os.getpid()} {key}\n")
    return 0


def tamper(path: Path, how: str) -> None:
    """Try to change an input in place; report (not fail on) a refusal."""
    try:
        if how == "write":
            with open(path, "r+b") as f:
                f.write(b"CORRUPTED")
        elif how == "append":
            with open(path, "ab") as f:
                f.write(b"CORRUPTED")
        elif how == "truncate":
            os.truncate(path, 0)
        elif how == "chmod":
            os.chmod(path, 0o666)
            path.write_bytes(b"CORRUPTED")
        elif how == "recreate":
            path.unlink()
            path.write_bytes(b"CORRUPTED")
        print(f"tampered with {path} ({how})", flush=True)
    except OSError as exc:
        print(f"could not tamper with {path} ({how}): {exc}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
