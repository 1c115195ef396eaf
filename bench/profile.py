"""Profile the service under one benchmark phase with py-spy, and print where
its threads spend their time (inclusive share of samples per function).

    python bench/profile.py detail|list|create|detail-under-logins [--seconds 6]

Needs py-spy (`pip install py-spy`) and permission to trace a child process.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import loadgen
import run


def loads(stage: run.Stage) -> dict[str, loadgen.Load]:
    return {
        "detail": loadgen.Load(stage.base, stage.detail_paths, token=stage.token),
        "detail-under-logins": loadgen.Load(stage.base, stage.detail_paths, token=stage.token),
        "list": loadgen.Load(stage.base, ["/api/v1/credentials/?limit=100"], token=stage.token),
        "create": loadgen.Load(
            stage.base,
            ["/api/v1/credentials/"],
            method="POST",
            body={"username": "created", "password": "pw"},
            token=stage.token,
        ),
    }


def summarise(raw: Path, top: int) -> None:
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        for frame in set(stack.split(";")):
            inclusive[frame] += samples
    print(f"{total} samples (all threads); inclusive share of each function:")
    for frame, samples in inclusive.most_common(top):
        print(f"{100 * samples / total:5.1f}%  {frame[:140]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["detail", "list", "create", "detail-under-logins"])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--top", type=int, default=60)
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw stacks in this file")
    args = parser.parse_args()
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    with tempfile.TemporaryDirectory(prefix="migration-profile-") as tmp:
        stage = run.Stage(Path(tmp), runs=0, deep_rows=0)
        raw = args.raw or Path(tmp) / "profile.txt"
        try:
            recorder = subprocess.Popen(
                [spy, "record", "-p", str(stage.service.pid), "-d", str(int(args.seconds) + 1),
                 "-r", "250", "-f", "raw", "-o", str(raw), "--threads"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
            load = loads(stage)[args.phase]
            if args.phase == "detail-under-logins":
                with run.Logins(stage.base):
                    result = loadgen.run(load, seconds=args.seconds, connections=32)
            else:
                result = loadgen.run(load, seconds=args.seconds, connections=32)
            print(f"{args.phase}: {result.rps:.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms")
            recorder.wait()
        finally:
            stage.close()
        summarise(raw, args.top)


if __name__ == "__main__":
    main()
