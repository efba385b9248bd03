"""``python -m mlc_utils demo-data``: the command line of :func:`~mlc_utils.data.demo.writer.make_demo_dataset`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlc_utils.data.demo.labels import CLASS_NAMES, NUM_CLASSES
from mlc_utils.data.demo.writer import DEFAULT_N, DEFAULT_TEST_FRACTION, MARKER, MIN_N, make_demo_dataset


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlc_utils demo-data",
        description="Write a synthetic dataset in the competition layout (train.csv, test.csv, data/) "
                    "so the study runs without the real data.",
        epilog="Besides the real layout it writes test_labels.csv (the hidden test truth, ImageID,Labels, "
               f"for scoring a submission) and {MARKER} (marks the folder as a demo dataset).")
    parser.add_argument("--out", required=True, help="output folder (new, empty, or a previous demo dataset)")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"images in all, train + test (>= {MIN_N}; "
                                                                 f"default {DEFAULT_N})")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files "
                                                            "(default 0)")
    parser.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                        help=f"share of images in test.csv, 0 < F < 1 (default {DEFAULT_TEST_FRACTION})")
    parser.add_argument("--force", action="store_true", help="write into a non-empty folder that is not a "
                                                             "previous demo dataset (other files are kept)")
    return parser


def cli(argv: list[str]) -> int:
    """``demo-data``: 0 on success, 2 for a bad option, 1 when the output folder is refused."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help or an argparse error (already printed)
        return int(stop.code or 0)
    checks = [(args.n < MIN_N, f"--n must be at least {MIN_N} (got {args.n})"),
              (args.seed < 0, f"--seed must be >= 0 (got {args.seed})"),
              (not 0.0 < args.test_fraction < 1.0,
               f"--test-fraction must be strictly between 0 and 1 (got {args.test_fraction})")]
    errors = [message for bad, message in checks if bad]
    if errors:
        for message in errors:
            print(f"demo-data: error: {message}", file=sys.stderr)
        return 2
    try:
        summary = make_demo_dataset(args.out, n=args.n, seed=args.seed, test_fraction=args.test_fraction,
                                    force=args.force)
    except OSError as err:  # DemoDirError, or a folder that cannot be written
        print(f"demo-data: error: {err}", file=sys.stderr)
        return 1
    freq = summary["label_frequency"]
    top = sorted(range(NUM_CLASSES), key=lambda c: -freq[c])[:6]
    print(f"demo-data: wrote {summary['n_train']} train + {summary['n_test']} test images to {summary['out_dir']} "
          f"in {summary['seconds']:.1f} s (seed {summary['seed']})")
    print("  most frequent classes: " + ", ".join(f"{c} {CLASS_NAMES[c]} {freq[c]:.3f}" for c in top))
    print(f"  labels per image: min {summary['labels_per_image'][0]}, mean {summary['labels_per_image'][1]}, "
          f"max {summary['labels_per_image'][2]}; objects named in captions: {summary['mention_rate']:.0%}")
    print(f"  test truth (not part of the real layout): {Path(summary['out_dir']) / 'test_labels.csv'}")
    return 0
