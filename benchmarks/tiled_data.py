"""A data folder the size of the full competition (30,000 labelled + 10,000 test rows) made from a
smaller one by tiling it: every row repeated under new ImageIDs, every image a symbolic link.

Why: the dev pack holds a third of the labelled rows, and what grows faster than the rows (a
threshold search, a weight grid, the iterative split) only shows at full size. Timings on the tiled
folder are the full data's (40,000 files decoded and run through the backbone, 30,000 captions);
its scores mean nothing (copies of a row land in different folds).

    python benchmarks/tiled_data.py --out /tmp/mlc-tiled-30000 [--rows 30000/10000]
    python -m mlc_utils run --params params/comp5329-cpu.yaml --set data_dir=/tmp/mlc-tiled-30000 \
        --set image.cache_dir=/tmp/empty-cache
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from _common import add_data_argument, require_data


def tile(data: Path, out: Path, train_rows: int, test_rows: int) -> Path:
    from mlc_utils.data.csvio import read_test_csv, read_train_csv, write_competition_csv
    from mlc_utils.data.labels import LabelSpace
    train = read_train_csv(data / "train.csv", LabelSpace(20))[["ImageID", "Labels", "Caption"]]
    test = read_test_csv(data / "test.csv")[["ImageID", "Caption"]]
    (out / "data").mkdir(parents=True, exist_ok=True)

    def copies(frame, rows: int, tag: str):
        picked = frame.iloc[[i % len(frame) for i in range(rows)]].copy()
        originals = picked["ImageID"].tolist()
        picked["ImageID"] = [f"{tag}{i // len(frame)}-{image_id}" for i, image_id in enumerate(originals)]
        for new, old in zip(picked["ImageID"], originals):
            link = out / "data" / new
            if not link.is_symlink():
                os.symlink((data / "data" / old).resolve(), link)
        return picked.reset_index(drop=True)
    write_competition_csv(copies(train, train_rows, "t"), out / "train.csv")
    write_competition_csv(copies(test, test_rows, "s"), out / "test.csv")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_argument(parser)
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (links to --data's images)")
    parser.add_argument("--rows", default="30000/10000", help="labelled/test rows (default: the competition's)")
    args = parser.parse_args(argv)
    train_rows, test_rows = (int(v) for v in args.rows.split("/"))
    print(tile(require_data(args.data).resolve(), args.out, train_rows, test_rows))


if __name__ == "__main__":
    main()
