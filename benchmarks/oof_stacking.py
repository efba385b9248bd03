"""Out-of-fold stacking on real data: a params profile with ``split.folds``, stage times and scores.

Runs the study's own stages (split, image, caption, fusion, ensemble) through the pipeline with
``split.folds: K`` over a params file (default ``params/comp5329-cpu.yaml``), so what is measured is
what the study does. Members are cached per fold in ``runs/<run>/`` and backbone features in
``--cache-dir``, so a re-run reuses every fold it has. ``--limit N`` keeps the first N labelled rows
(and N/10 test rows) in a throw-away data folder over the same images: a quick, smaller measurement.

Prints each stage's wall time, then every member's sample-F1 with the threshold tuned on the rows
it scores (in-sample) and cross-fitted (threshold, and weights where there are any, fitted on the
other folds only): the latter is the number to quote.

    python benchmarks/oof_stacking.py --folds 5 [--limit 2000] [--set caption.train.epochs=2]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import REPO, add_data_argument, require_data

STAGES = ["split", "image", "caption", "fusion", "ensemble"]


def subset_folder(data: Path, limit: int, out: Path) -> Path:
    """The first ``limit`` labelled rows and ``limit // 10`` test rows of ``data``, same images (a link)."""
    from mlc_utils.data.csvio import (
        read_test_csv,
        read_train_csv,
        write_competition_csv,
    )
    from mlc_utils.data.labels import LabelSpace
    train = read_train_csv(data / "train.csv", LabelSpace(20))
    test = read_test_csv(data / "test.csv")
    out.mkdir(parents=True, exist_ok=True)
    write_competition_csv(train.iloc[:limit][["ImageID", "Labels", "Caption"]], out / "train.csv")
    write_competition_csv(test.iloc[:max(1, limit // 10)][["ImageID", "Caption"]], out / "test.csv")
    (out / "data").unlink(missing_ok=True)
    (out / "data").symlink_to((data / "data").resolve(), target_is_directory=True)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_argument(parser)
    parser.add_argument("--params", type=Path, default=REPO / "params" / "comp5329-cpu.yaml")
    parser.add_argument("--folds", type=int, default=5, help="split.folds (>= 2)")
    parser.add_argument("--limit", type=int, default=0, help="first N labelled rows only (0 = all)")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "cache", help="image.cache_dir (features)")
    parser.add_argument("--run", default="", help="run name (default: oof-K[-N])")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error(f"--folds: must be >= 2 (got {args.folds})")
    data = require_data(args.data).resolve()
    if args.limit:
        data = subset_folder(data, args.limit, Path(tempfile.gettempdir()) / f"mlc-oof-subset-{args.limit}")
    run = args.run or f"oof-{args.folds}" + (f"-{args.limit}" if args.limit else "")
    overrides = [f"run={run}", f"data_dir={data}", f"stages={json.dumps(STAGES)}", f"split.folds={args.folds}",
                 f"image.cache_dir={args.cache_dir.resolve()}", *args.overrides]

    from mlc_utils.run.pipeline import run_study
    started = time.time()
    results = run_study(str(args.params), overrides, root=REPO, log=print)
    total = time.time() - started
    print(f"\n{data} ({'first ' + str(args.limit) + ' rows' if args.limit else 'all rows'}), {args.folds} folds")
    for result in results:
        print(f"  {result.stage:9s} {result.status:8s} {result.seconds:8.1f} s")
    print(f"  total              {total:8.1f} s")
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise SystemExit(f"{failed[0].stage} failed: {failed[0].error}")

    import pandas as pd
    summary = json.loads((REPO / "runs" / run / "ensemble" / "summary.json").read_text())
    table = summary["tables"]["Table 1 (sample-F1 by model and threshold)"]
    frame = pd.DataFrame(table["data"], columns=table["columns"])
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(frame[["model", "F1@0.50", "F1 tuned global", "tuned threshold", "F1 cross-fitted", "scores"]]
              .round(4).to_string(index=False))
    print("ensemble:", {k: v for k, v in summary["headline"].items() if "f1" in k or k == "threshold"})


if __name__ == "__main__":
    main()
