"""How long the light commands take to answer, and how much memory they use: ``--help`` and ``validate``.

Each command runs in a fresh interpreter (as a user types it) ``--repeat`` times; the script prints
the median wall time, the peak resident memory and whether torch was imported. ``--checkout DIR``
measures another checkout of the project (an older commit, to compare before and after).

    python benchmarks/cli_startup.py [--data DIR] [--repeat 5] [--checkout ../old]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, add_data_argument, require_data

PROBE = """
import json, resource, sys
from mlc_utils import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), file=sys.stderr)
"""


def measure(argv: list[str], checkout: Path, repeat: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    walls, last = [], {}
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env,
                              cwd=checkout)
        walls.append(time.perf_counter() - started)
        last = json.loads(done.stderr.strip().splitlines()[-1])
    return {"seconds": statistics.median(walls), **last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_argument(parser)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--checkout", type=Path, default=REPO, help="project checkout to measure (default: this one)")
    args = parser.parse_args()
    data = require_data(args.data).resolve()  # the commands run in the checkout's folder
    commands = [["--help"], ["run", "--help"], ["validate", "--help"], ["validate", "--data", str(data), "--no-images"],
                ["validate", "--data", str(data)]]
    print(f"checkout {args.checkout.resolve()}, median of {args.repeat} runs each")
    print(f"{'command':<40} {'seconds':>8} {'peak MB':>8} {'exit':>5}  torch imported")
    for argv in commands:
        result = measure(argv, args.checkout.resolve(), args.repeat)
        shown = " ".join(a if a != str(data) else "DATA" for a in argv)
        print(f"{shown:<40} {result['seconds']:>8.2f} {result['rss_mb']:>8.0f} {result['code'] or 0:>5}  {result['torch']}")


if __name__ == "__main__":
    main()
