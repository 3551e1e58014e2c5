"""Benchmark of `ccat-wm verify`'s file check against hashlib, one file after the other.

    python bench/verify_bench.py [--small 2000x1] [--large 20x100] [--repeat 3]

Writes N files of S MB, then alternately times (a) reading and hashing every file with
hashlib in one thread (what a plain loop does) and (b) `check_files`, verify's check of
each recorded file (stat, size, SHA-256; in parallel, one thread per CPU by default)
plus the walk for unexpected files. Files are in the page cache for both (written,
then read once before timing). Prints medians in GB/s, the ratio (b)/(a) of
throughput, and as its last line one JSON object; the target is at least 1 GB/s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ccat_wm.execution.verify import Expected, check_files


def _sizes(spec: str) -> tuple[int, int]:
    count, mb = spec.split("x")
    return int(count), int(mb)


def _write(root: Path, count: int, mb: int) -> list[Expected]:
    rows = []
    block = os.urandom(1 << 20)
    for i in range(count):
        path = root / f"f{i:06d}.bin"
        data = block * mb
        path.write_bytes(data)
        rows.append(Expected(str(path), "product", i, len(data), hashlib.sha256(data).hexdigest()))
    return rows


def _loop(rows: list[Expected]) -> float:
    start = time.perf_counter()
    for row in rows:
        with open(row.path, "rb") as f:
            assert hashlib.file_digest(f, "sha256").hexdigest() == row.sha256
    return time.perf_counter() - start


def _verify(rows: list[Expected], root: Path) -> float:
    start = time.perf_counter()
    report = check_files(rows, [root])
    elapsed = time.perf_counter() - start
    assert report.ok, report
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", default="2000x1", help="COUNTxMB of small files")
    parser.add_argument("--large", default="20x100", help="COUNTxMB of large files")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, object] = {"cpus": os.cpu_count()}
    for label, spec in (("small", args.small), ("large", args.large)):
        count, mb = _sizes(spec)
        with tempfile.TemporaryDirectory(prefix="ccat-verify-bench-") as tmp:
            root = Path(tmp)
            rows = _write(root, count, mb)
            total = sum(r.size for r in rows)
            _loop(rows)  # warm the page cache
            loop_s, verify_s = [], []
            for _ in range(args.repeat):
                loop_s.append(_loop(rows))
                verify_s.append(_verify(rows, root))
            loop_rate = total / statistics.median(loop_s) / 1e9
            verify_rate = total / statistics.median(verify_s) / 1e9
            print(
                f"{label}: {count} x {mb} MB = {total / 1e9:.2f} GB; hashlib loop "
                f"{loop_rate:.2f} GB/s, verify {verify_rate:.2f} GB/s "
                f"(ratio {verify_rate / loop_rate:.2f}, target >= 1 GB/s: "
                f"{'met' if verify_rate >= 1 else 'NOT met'})"
            )
            figures[label] = {
                "files": count, "mb_each": mb, "loop_gb_s": round(loop_rate, 3),
                "verify_gb_s": round(verify_rate, 3), "ratio": round(verify_rate / loop_rate, 3),
            }  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
