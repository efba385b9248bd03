#!/usr/bin/env python3
"""How many images per second the input pipeline delivers: decoding, augmenting, DataLoader workers.

Goes through mlc_utils' own pieces (``images.load_image``, ``images.build_transform`` with the
model's timm data config, ``images.ImageDataset`` in a torch ``DataLoader``), so the figures are
what ``train.loop.fit`` and ``features.compute_features`` get. Two tables:

1. per-image cost of each stage in this process (decode, resize/crop, RandAugment, to-tensor +
   normalise), with torch using 1 thread and with ``--threads`` threads: the loader's workers run
   with 1 thread, but with ``num_workers: 0`` (the library default) the transforms run in the main
   process with all of torch's threads;
2. images/s of whole passes over ``--n`` images through a DataLoader with N workers, for decode
   only, decode + eval transform, decode + train transform (RandAugment, the training default),
   the train transform without RandAugment, JPEG draft-mode decoding, and images already decoded
   in memory (the ceiling of any decoded/pre-resized image cache). Worker start-up is included
   in each pass, as in one epoch of ``fit`` (``persistent_workers=False``). With 0 workers an
   extra column repeats the pass with the main process limited to 1 torch thread.

Compare the train-transform row with the training images/s of ``benchmarks/train_throughput.py``
(or ``scripts/gpu_check.sh`` on a GPU): a GPU that trains faster than the loader feeds it waits.

    python benchmarks/input_pipeline.py                      # ~1 minute on 2 cores
    python benchmarks/input_pipeline.py --workers 0,2,4,8 --n 1000
"""
from __future__ import annotations

import argparse
import math
import time

import _common  # noqa: F401  (puts the repository on sys.path)
from _common import HelpFormatter, add_data_argument, load_rows, machine_line, print_table, require_data, set_threads


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    add_data_argument(p)
    p.add_argument("--n", type=int, default=256, help="images per pass (the first N rows of train.csv)")
    p.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader num_workers values")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--model", default="efficientnet_lite0", help="timm model whose data config is used")
    p.add_argument("--threads", type=int, default=0, help="torch threads of the main process (0: all cores)")
    p.add_argument("--stage-n", type=int, default=100, help="images for the per-stage table (0: skip it)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# datasets (all subclasses of mlc_utils' ImageDataset, so only the measured difference changes)

def make_datasets(image_dir, ids, targets, data_config):
    import torch
    from PIL import Image, ImageOps

    from mlc_utils.data.image_files import ImageReadError, _to_rgb, load_image
    from mlc_utils.data.images import ImageDataset, build_transform

    eval_tf = build_transform(data_config, train=False)
    train_tf = build_transform(data_config, train=True)
    plain_tf = build_transform(data_config, train=True, auto_augment=None)
    # the first resize of the eval transform: never draft below it, so nothing is upsampled
    draft_size = int(math.floor(data_config["input_size"][-1] / data_config["crop_pct"]))

    class DecodeOnly(ImageDataset):
        def __getitem__(self, index):
            image = load_image(self.image_dir / self.image_ids[index])
            return torch.tensor(image.size), torch.from_numpy(self.targets[index])

    class DraftDataset(ImageDataset):
        """load_image with ``Image.draft('RGB', (s, s))``: libjpeg decodes at 1/2, 1/4 or 1/8 scale
        when the image is at least that many times larger than s on both sides."""

        def __getitem__(self, index):
            path = self.image_dir / self.image_ids[index]
            try:
                with Image.open(path) as image:
                    if image.format == "JPEG":
                        image.draft("RGB", (draft_size, draft_size))
                    image.load()
                    image = _to_rgb(ImageOps.exif_transpose(image))
            except OSError as err:
                raise ImageReadError(f"image {path}: {err}") from None
            return self.transform(image), torch.from_numpy(self.targets[index])

    class Preloaded(ImageDataset):
        """Decoded RGB images held in memory (what a decoded-image cache would serve)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.images = [load_image(self.image_dir / i) for i in self.image_ids]

        def __getitem__(self, index):
            return self.transform(self.images[index]), torch.from_numpy(self.targets[index])

    return [
        ("decode only (mlc load_image)", DecodeOnly(image_dir, ids, targets)),
        ("decode + eval transform", ImageDataset(image_dir, ids, targets, eval_tf)),
        ("decode + train transform (RandAugment)", ImageDataset(image_dir, ids, targets, train_tf)),
        ("decode + train transform, no RandAugment", ImageDataset(image_dir, ids, targets, plain_tf)),
        (f"draft-mode decode ({draft_size}px) + train transform", DraftDataset(image_dir, ids, targets, train_tf)),
        ("preloaded decoded images + train transform", Preloaded(image_dir, ids, targets, train_tf)),
    ], (eval_tf, train_tf, draft_size)


def loader_rate(dataset, workers: int, batch_size: int) -> float:
    """Images/s of one full pass (worker start-up included, as in one epoch of fit)."""
    from torch.utils.data import DataLoader
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        persistent_workers=False)
    start = time.perf_counter()
    seen = 0
    for x, _ in loader:
        seen += len(x)
    return seen / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# per-stage table

def stage_rows(image_dir, ids, data_config, eval_tf, train_tf, draft_size, threads: int):
    import torch
    from PIL import Image

    from mlc_utils.data.images import load_image

    paths = [image_dir / i for i in ids]

    def per_image_ms(fn, items, repeat=2):
        best = math.inf
        for _ in range(repeat):  # best of 2: the first pass also warms the page cache
            start = time.perf_counter()
            out = [fn(i) for i in items]
            best = min(best, time.perf_counter() - start)
        return 1000.0 * best / len(items), out

    def draft_decode(path):
        with Image.open(path) as image:
            image.draft("RGB", (draft_size, draft_size))
            image.load()
            return image.convert("RGB")

    eval_steps, train_steps = list(eval_tf.transforms), list(train_tf.transforms)
    # eval: Resize, CenterCrop, ToTensor, Normalize; train: RRC, flip, RandAugment, ToTensor, Normalize
    resize_crop = lambda im: eval_steps[1](eval_steps[0](im))  # noqa: E731
    rrc_flip = lambda im: train_steps[1](train_steps[0](im))  # noqa: E731
    randaug = train_steps[2]
    to_tensor_norm = lambda im: eval_steps[3](eval_steps[2](im))  # noqa: E731

    rows = []
    saved = torch.get_num_threads()
    results = {}
    for t in (1, threads):
        torch.set_num_threads(t)
        ms, images = per_image_ms(load_image, paths)
        r = {"decode (mlc load_image)": ms}
        r["decode, draft mode"], drafted = per_image_ms(draft_decode, paths)
        r["eval resize + centre crop"], cropped = per_image_ms(resize_crop, images)
        r["train random-resized-crop + flip"], rrc = per_image_ms(rrc_flip, images)
        r["train RandAugment (rand-m9-mstd0.5)"], _ = per_image_ms(randaug, rrc)
        r["to tensor + normalise"], _ = per_image_ms(to_tensor_norm, cropped)
        r["whole eval transform (decoded input)"], _ = per_image_ms(eval_tf, images)
        r["whole train transform (decoded input)"], _ = per_image_ms(train_tf, images)
        results[t] = r
        if t == threads:
            break
    torch.set_num_threads(saved)
    reduced = sum(d.size != i.size for d, i in zip(drafted, images))
    for name in results[1]:
        one = results[1][name]
        many = results.get(threads, results[1])[name]
        rows.append([name, one, 1000.0 / one, many])
    return rows, reduced, len(images)


def main(argv=None) -> int:
    args = parse_args(argv)
    data = require_data(args.data)
    threads = set_threads(args.threads)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    from mlc_utils.models import create_image_model

    ids, targets = load_rows(data, args.n)
    data_config = create_image_model(args.model, pretrained=False, img_size=args.img_size).spec["data"]
    image_dir = data / "data"
    print(machine_line())
    print(f"data: {data} ({len(ids)} images), model data config: {args.model} {data_config}")
    print(f"main-process torch threads: {threads}; DataLoader workers run with 1 thread each; "
          f"batch size {args.batch_size}\n")

    datasets, (eval_tf, train_tf, draft_size) = make_datasets(image_dir, ids, targets, data_config)
    if args.stage_n:
        rows, reduced, count = stage_rows(image_dir, ids[:args.stage_n], data_config, eval_tf, train_tf,
                                          draft_size, threads)
        print_table(["stage (one process)", "ms/img, 1 thread", "img/s, 1 thread",
                     f"ms/img, {threads} threads"], rows,
                    title=f"Per-image cost by stage ({min(args.stage_n, len(ids))} images, best of 2)")
        print(f"draft mode reduced {reduced} of {count} images (libjpeg scales by 1/2..1/8 only when the "
              f"image is >= 2x {draft_size}px on both sides)\n")

    import torch
    one_thread_column = 0 in workers and threads > 1
    rows = []
    for name, dataset in datasets:
        row = [name] + [loader_rate(dataset, w, args.batch_size) for w in workers]
        if one_thread_column:  # num_workers=0 with the main process limited to 1 torch thread
            torch.set_num_threads(1)
            row.append(loader_rate(dataset, 0, args.batch_size))
            torch.set_num_threads(threads)
        rows.append(row)
    headers = [f"img/s, {w} workers" + (f" ({threads} thr)" if w == 0 and one_thread_column else "")
               for w in workers] + (["img/s, 0 workers (1 thr)"] if one_thread_column else [])
    print_table(["variant (DataLoader pass)"] + headers, rows,
                title=f"DataLoader images/s ({len(ids)} images per pass, worker start-up included)")
    by_name = {r[0]: r[1:] for r in rows}
    train, decode = by_name["decode + train transform (RandAugment)"], by_name["decode only (mlc load_image)"]
    # one core's rate: a pass with 1 worker, or in-process with 1 torch thread (the better of the two)
    single = [k for k, w in enumerate(workers) if w == 1] + ([len(workers)] if one_thread_column else [])
    if single:
        k = max(single, key=lambda c: train[c])
        per_core, share = train[k], train[k] / decode[k]
        print(f"\nreading: decode + train transform runs at ~{per_core:.0f} img/s on one core, decoding being "
              f"~{100 * share:.0f}% of that time; a GPU training at R img/s needs about R/{per_core:.0f} "
              f"loader workers on otherwise idle cores (e.g. {math.ceil(2000 / per_core)} for 2000 img/s).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
