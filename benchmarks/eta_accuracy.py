"""How true was the run's time left? Every run-ETA ``run`` printed (on each epoch's line), beside the
time that was actually left, from the run's own record ``runs/<run>/eta.jsonl`` (written by every
run that prints a plan: each time left printed, with its timestamp, and when each stage started and
ended). The time left is measured to the end of the last stage (the report and its PDF follow, a few
seconds). The bar (issue 30): within 30% from the end of the first epoch on.

After a run (idle machine; ``MLC_PLAN`` on, the default)::

    python benchmarks/eta_accuracy.py --run runs/demo
    # or run the study first (--force: every stage runs), then print the table
    python benchmarks/eta_accuracy.py --params params/comp5329-cpu.yaml --set data_dir=../shared/comp5329-dev --force

``--every S`` prints one row per S seconds of the run (the first and last ETA always); ``--all`` every one.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _common import REPO, machine_line

TOLERANCE = 0.30


def read_log(path: Path) -> tuple[list[dict], float | None, dict]:
    """(the ETA records, when the last stage ended or None when the run did not finish, the run's start record)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    start = next((r for r in records if r.get("event") == "run_started"), {})
    ended = next((r for r in reversed(records) if r.get("event") == "run_ended"), None)
    etas = [r for r in records if r.get("event") == "eta"]
    return etas, (ended["time"] if ended and ended.get("status") == "ok" else None), start


def rows(etas: list[dict], end: float) -> list[dict]:
    out = []
    for r in etas:
        actual = end - r["time"]
        out.append({**r, "actual": actual, "ratio": r["run_left"] / actual if actual > 0 else float("inf")})
    return out


def _clock(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def table(found: list[dict], start: float, every: float | None) -> list[str]:
    lines = ["| at (m:s) | stage | member | epoch | printed run ETA (s) | actual left (s) | printed / actual | within 30% |",
             "| ---: | --- | --- | --- | ---: | ---: | ---: | --- |"]
    last_shown = None
    for n, r in enumerate(found):
        if every and 0 < n < len(found) - 1 and last_shown is not None and r["time"] - last_shown < every:
            continue
        last_shown = r["time"]
        fold = f" fold {r['fold']}/{r['folds']}" if r.get("folds") else ""
        lines.append(f"| {_clock(r['time'] - start)} | {r['stage']} | {r.get('member') or ''}{fold} | "
                     f"{r['epoch']}/{r['epochs']} | {r['run_left']:,.0f} | {r['actual']:,.0f} | {r['ratio']:.2f} | "
                     f"{'yes' if abs(r['ratio'] - 1) <= TOLERANCE else 'no'} |")
    return lines


def summary(found: list[dict]) -> str:
    within = sum(abs(r["ratio"] - 1) <= TOLERANCE for r in found)
    worst = max(found, key=lambda r: abs(r["ratio"] - 1))
    return (f"{len(found)} run ETAs printed; {within} ({within / len(found):.0%}) within 30% of the time left; "
            f"ratio from {min(r['ratio'] for r in found):.2f} to {max(r['ratio'] for r in found):.2f} "
            f"(worst: {worst['ratio']:.2f} at {worst['stage']} {worst.get('member') or ''} epoch {worst['epoch']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="the run's folder, e.g. runs/demo (default: from --params)")
    parser.add_argument("--params", help="run the study with these parameters first")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="overrides for the run, as for run")
    parser.add_argument("--force", action="store_true", help="re-run every stage (run --force)")
    parser.add_argument("--every", type=float, default=30.0, help="one row per this many seconds (default 30)")
    parser.add_argument("--all", action="store_true", help="every ETA printed, one row each")
    args = parser.parse_args()
    if args.params:
        command = [sys.executable, "-m", "mlc_utils", "run", "--params", args.params,
                   *[f"--set={o}" for o in args.overrides], *(["--force"] if args.force else [])]
        code = subprocess.call(command, cwd=REPO)
        if code:
            raise SystemExit(f"the run failed (exit status {code}): no table")
        if args.run is None:
            from mlc_utils.study.params import load_params, parse_override
            args.run = REPO / "runs" / load_params(str(REPO / args.params),
                                                   dict(parse_override(o) for o in args.overrides)).run
    if args.run is None:
        raise SystemExit("--run DIR or --params FILE")
    log = args.run / "eta.jsonl"
    if not log.is_file():
        raise SystemExit(f"{log}: not found (a run with its plan writes it; MLC_PLAN=off or --no-plan writes none)")
    etas, end, start = read_log(log)
    if end is None:
        raise SystemExit(f"{log}: the run did not finish every stage: nothing to compare with")
    if not etas:
        raise SystemExit(f"{log}: no run ETA was printed (no epochs, or no plan)")
    found = rows(etas, end)
    print(machine_line())
    print(f"run ETA against the time left in {args.run} (stages {', '.join(start.get('stages', []))}; "
          f"plan {sum(v or 0 for v in start.get('planned', {}).values()):,.0f} s, "
          f"ran {end - start.get('time', end):,.0f} s)")
    print()
    print("\n".join(table(found, start.get("time", found[0]["time"]), None if args.all else args.every)))
    print()
    print(summary(found))


if __name__ == "__main__":
    main()
