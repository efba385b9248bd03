#!/usr/bin/env python3
"""Frozen-backbone feature extraction on the CPU: mlc_utils.train.features against a bare model(x) loop.

Same model object, same images, same batch size, same torch threads. Rows:

- ``bare model(x), preloaded``: ``model.embed`` (the backbone) over images already decoded and
  transformed into one tensor, under ``torch.inference_mode``: the model's own speed, the ceiling;
- ``bare model(x), preloaded, channels_last``: the same with the model and inputs in
  ``torch.channels_last`` (``compute_features`` passes channels_last inputs since this benchmark
  showed a 1.5-1.8x CPU speed-up for convnets; see the README);
- ``mlc engine.predict_probs, preloaded``: the library's inference loop (``TensorDataset`` +
  ``DataLoader``, ``torch.no_grad``) over the same tensors;
- ``bare decode + transform + model(x)``: a plain torch Dataset (PIL open/convert + timm's eval
  transform from ``resolve_data_config``) in a DataLoader with ``--workers``, then ``model(x)``;
- ``mlc features.cached_features (fresh cache)``: the real code path (``load_image``, the model's
  eval view, ``compute_features``, weight hashing for the cache key, writing the cache) into a new
  temporary cache directory, same ``--workers``.

The overhead column divides the bare rate by the row's rate, within the same inputs (preloaded
rows against the first row, rows with decoding against the bare decoding row): 1.00 = no overhead,
below 1 = faster than the plain loop (the bare loops keep torch's default contiguous layout).
A last check prints the largest difference between the features of the two decoding rows, to show
they computed the same thing.

    python benchmarks/feature_extraction.py                  # ~1 minute on 2 cores
    python benchmarks/feature_extraction.py --model efficientnet_lite2 --img-size 260 --n 500
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time

import _common  # noqa: F401  (puts the repository on sys.path)
from _common import HelpFormatter, add_data_argument, load_rows, machine_line, print_table, require_data, set_threads


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    add_data_argument(p)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--pretrained", default="true",
                   help="true (packaged offline weights where they exist), false (random init) or a checkpoint")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--n", type=int, default=160, help="images (the first N rows of train.csv)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the two decoding rows "
                                                          "(0 = the library default)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all usable cores)")
    p.add_argument("--repeats", type=int, default=2, help="passes per row; the fastest is reported")
    p.add_argument("--no-channels-last", action="store_true", help="skip the channels_last row")
    return p.parse_args(argv)


def pretrained_value(text: str):
    return {"true": True, "false": False}.get(text.lower(), text)


class BareImages:
    """The plainest image Dataset: PIL open + convert + a timm transform."""

    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        from PIL import Image
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB"))


def main(argv=None) -> int:
    args = parse_args(argv)
    data = require_data(args.data)
    threads = set_threads(args.threads)
    import numpy as np
    import torch
    from timm.data import create_transform, resolve_data_config
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from mlc_utils.evaluation.predict import predict_probs
    from mlc_utils.train.features import FeatureCache, cached_features
    from mlc_utils.models import create_image_model

    ids, _ = load_rows(data, args.n)
    model = create_image_model(args.model, pretrained=pretrained_value(args.pretrained), img_size=args.img_size)
    model.eval()
    backbone = model.backbone
    size = args.img_size
    bare_tf = create_transform(**resolve_data_config({"input_size": (3, size, size)}, model=backbone))
    paths = [data / "data" / i for i in ids]
    print(machine_line())
    print(f"data: {data} ({len(ids)} images); model: {model.spec['arch']} ({model.spec['weights']}), "
          f"head {model.spec['head']}, {size}px; batch {args.batch_size}; torch threads: {threads}; "
          f"loader workers (decoding rows): {args.workers}\n")

    # decoded + transformed once, outside any timing, for the preloaded rows
    preload_start = time.perf_counter()
    x_all = torch.stack([BareImages(paths, bare_tf)[i] for i in range(len(paths))])
    preload_s = time.perf_counter() - preload_start
    batches = list(torch.split(x_all, args.batch_size))

    def timed(fn) -> tuple[float, object]:
        """Best of --repeats passes (a shared machine only ever slows a pass down)."""
        best, out = 0.0, None
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = fn()
            best = max(best, len(ids) / (time.perf_counter() - start))
        return best, out

    with torch.inference_mode():  # warm-up: one batch, allocator and kernels
        backbone(batches[0])

    def bare_preloaded(module, memory_format=torch.contiguous_format):
        with torch.inference_mode():
            return torch.cat([module(b.contiguous(memory_format=memory_format)) for b in batches])

    rows = []
    rate_a, feats_a = timed(lambda: bare_preloaded(backbone))
    rows.append(["bare model(x), preloaded", "no", rate_a, 1000 / rate_a, "1.00"])
    if not args.no_channels_last:
        cl = copy.deepcopy(backbone).to(memory_format=torch.channels_last)
        with torch.inference_mode():
            cl(batches[0].contiguous(memory_format=torch.channels_last))
        rate_cl, feats_cl = timed(lambda: bare_preloaded(cl, torch.channels_last))
        rows.append(["bare model(x), preloaded, channels_last", "no", rate_cl, 1000 / rate_cl, f"{rate_a / rate_cl:.2f}"])
        cl_diff = float((feats_cl - feats_a).abs().max())

    class Embed(nn.Module):  # predict_probs applies a sigmoid to whatever the module returns
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner.embed(x)

    dummy = torch.zeros(len(x_all), 1)
    rate_b, _ = timed(lambda: predict_probs(Embed(model), TensorDataset(x_all, dummy), batch_size=args.batch_size,
                                            device="cpu"))
    rows.append(["mlc engine.predict_probs, preloaded", "no", rate_b, 1000 / rate_b, f"{rate_a / rate_b:.2f}"])

    def bare_decoding():
        loader = DataLoader(BareImages(paths, bare_tf), batch_size=args.batch_size, num_workers=args.workers)
        with torch.inference_mode():
            return torch.cat([backbone(x) for x in loader])

    rate_c, feats_c = timed(bare_decoding)
    rows.append(["bare decode + transform + model(x)", "yes", rate_c, 1000 / rate_c, "1.00"])

    def mlc_features():
        with tempfile.TemporaryDirectory(prefix="mlc-bench-features-") as tmp:  # a fresh cache every pass
            cache = FeatureCache(tmp)
            out = cached_features(model, data, ids, "center", cache, batch_size=args.batch_size, device="cpu",
                                  num_workers=args.workers, progress=False)
            assert cache.computed == len(set(ids)) and cache.hits == 0, "the cache was not fresh"
            return out

    rate_d, feats_d = timed(mlc_features)
    rows.append(["mlc features.cached_features (fresh cache)", "yes", rate_d, 1000 / rate_d, f"{rate_c / rate_d:.2f}"])

    print_table(["variant", "decodes", "images/s", "ms/img", "overhead (bare/this)"], rows,
                title=f"CPU feature extraction, {len(ids)} images, {threads} torch threads, best of {args.repeats}")
    diff = float(np.abs(np.asarray(feats_d) - feats_c.numpy()).max())
    print(f"\nsame work: max |mlc features - bare features| = {diff:.2e}"
          + (f"; channels_last vs contiguous = {cl_diff:.2e}" if not args.no_channels_last else "")
          + f"; decoding + transforming the {len(ids)} images once for the preloaded rows took "
            f"{preload_s:.1f} s ({len(ids) / preload_s:.0f} img/s, outside the timings)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
