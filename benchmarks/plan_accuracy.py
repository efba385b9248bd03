"""How close is the plan's time to what a run measured? Per stage: the plan's estimate, the seconds
the run's stage manifest recorded (``runs/<run>/<stage>/stage.json``, key ``seconds``) and their
ratio, as a markdown table (the issue's bar: within 30% per stage).

Run it after a real run on the same machine, idle, with the run's parameters and data::

    python benchmarks/plan_accuracy.py --run runs/demo --params params/demo.yaml
    python benchmarks/plan_accuracy.py --run runs/comp5329-cpu --params params/comp5329-cpu.yaml \
        --data ../shared/comp5329-dev

The plan is made as ``run`` makes it (rows from the data folder, torch's default thread count, so
leave ``OMP_NUM_THREADS`` as the run had it) and reads the calibration cache the run left in
``cache/plan/calibration.json``; with nothing cached it calibrates first (a minute or so), on tcmalloc
where it is installed, as ``python -m mlc_utils`` does. Stages
the run skipped as unchanged keep the seconds of the run that last executed them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import REPO, machine_line

from mlc_utils.core.allocator import restart_on_tcmalloc

if __name__ == "__main__":  # calibrate under the allocator `run` gives its processes
    restart_on_tcmalloc([sys.executable, *sys.orig_argv[1:]])

TOLERANCE = 0.30


def measured_seconds(run_dir: Path, stage: str) -> float | None:
    path = run_dir / stage / "stage.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return float(manifest["seconds"]) if manifest.get("status") == "ok" and "seconds" in manifest else None


def table(plan, run_dir: Path) -> list[str]:
    lines = ["| stage | plan (s) | measured (s) | plan / measured | within 30% |", "| --- | ---: | ---: | ---: | --- |"]
    totals = [0.0, 0.0]
    for stage in plan.stages:
        planned, measured = stage.seconds, measured_seconds(run_dir, stage.stage)
        if planned is None or not measured:
            lines.append(f"| {stage.stage} | {_fmt(planned)} | {_fmt(measured)} | n/a | n/a |")
            continue
        totals[0], totals[1] = totals[0] + planned, totals[1] + measured
        ratio = planned / measured
        lines.append(f"| {stage.stage} | {planned:,.0f} | {measured:,.0f} | {ratio:.2f} | "
                     f"{'yes' if abs(ratio - 1) <= TOLERANCE else 'no'} |")
    if totals[1]:
        ratio = totals[0] / totals[1]
        lines.append(f"| total (stages with both) | {totals[0]:,.0f} | {totals[1]:,.0f} | {ratio:.2f} | "
                     f"{'yes' if abs(ratio - 1) <= TOLERANCE else 'no'} |")
    return lines


def _fmt(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the run's folder, e.g. runs/demo")
    parser.add_argument("--params", required=True, help="the params file the run used")
    parser.add_argument("--data", type=Path, help="the data folder the run used (sets data_dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any other override the run had, as for run")
    args = parser.parse_args()
    from mlc_utils.study.params import load_params, parse_override
    from mlc_utils.study.plan import make_plan
    overrides = dict(parse_override(o) for o in args.overrides)
    if args.data:
        overrides["data_dir"] = str(args.data.resolve())
    params = load_params(args.params, overrides)
    run_dir = args.run if args.run.is_absolute() else Path.cwd() / args.run
    if not run_dir.is_dir():
        raise SystemExit(f"--run {args.run}: no such folder")
    plan = make_plan(params, REPO, log=print)
    print(machine_line())
    print(f"plan of {args.params} against {args.run}: {plan.rows[0]:,} labelled and {plan.rows[1]:,} test rows "
          f"({plan.rows_from}), device {plan.device}")
    print()
    print("\n".join(table(plan, run_dir)))


if __name__ == "__main__":
    main()
