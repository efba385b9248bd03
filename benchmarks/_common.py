"""Shared helpers of the speed benchmarks (not a test module; nothing here is timed).

The benchmarks import ``mlc_utils`` from the repository they live in, so they run from a plain
checkout (``python benchmarks/X.py``) without installing the package.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# the real development pack beside the checkout, else the demo data made by `make demo-data`
DATA_CANDIDATES = (REPO.parent / "shared" / "comp5329-dev", REPO / "data" / "demo")


def default_data() -> Path | None:
    for candidate in DATA_CANDIDATES:
        if (candidate / "train.csv").is_file() and (candidate / "data").is_dir():
            return candidate
    return None


def add_data_argument(parser) -> None:
    found = default_data()
    parser.add_argument("--data", type=Path, default=found,
                        help="data folder (train.csv + data/*.jpg); default: the real dev pack "
                             "../shared/comp5329-dev when present, else data/demo")


def require_data(data: Path | None) -> Path:
    if data is None:
        raise SystemExit("no data folder: pass --data DIR, or make the demo data with "
                         "`python -m mlc_utils demo-data --out data/demo`")
    if not (Path(data) / "train.csv").is_file():
        raise SystemExit(f"--data {data}: no train.csv there")
    return Path(data)


def load_rows(data: Path, n: int, num_classes: int = 20):
    """The first ``n`` training rows of ``data``: (image ids, (n, C) float32 targets)."""
    from mlc_utils.data.csvio import read_train_csv
    from mlc_utils.data.labels import LabelSpace
    space = LabelSpace(num_classes)
    frame = read_train_csv(Path(data) / "train.csv", space)
    if len(frame) == 0:
        raise SystemExit(f"{data}/train.csv has no rows")
    frame = frame.head(n)
    return list(frame["ImageID"]), space.encode(list(frame["Labels"]))


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (default: every core this process may use) and return the number."""
    import torch
    if not threads:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def machine_line() -> str:
    import platform
    import torch
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = "load %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "load n/a"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"machine: {platform.processor() or platform.machine()}, {cores} usable CPU cores ({load}), {gpu}; "
            f"python {platform.python_version()}, torch {torch.__version__}")


def _proc_status_mib(field: str) -> float | None:
    """A memory line of /proc/self/status (``VmHWM``, ``VmRSS``) in MiB; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), MiB; falls back to getrusage."""
    peak = _proc_status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mib() -> float:
    current = _proc_status_mib("VmRSS")
    return float("nan") if current is None else current


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        return f"{value:,.{digits}f}"
    return str(value)


def print_table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    """A GitHub-markdown table (pastes into the README and notes as is); also returned."""
    cells = [[fmt(c) if not isinstance(c, str) else c for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(_numeric(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values):
        return "| " + " | ".join(v.rjust(w) if num else v.ljust(w)
                                 for v, w, num in zip(values, widths, numeric)) + " |"
    out = []
    if title:
        out.append(title)
    out.append(line(headers))
    out.append("| " + " | ".join(("-" * (w - 1) + ":") if num else "-" * w
                                 for w, num in zip(widths, numeric)) + " |")
    out.extend(line(r) for r in cells)
    text = "\n".join(out)
    print(text, flush=True)
    return text


def _numeric(text: str) -> bool:
    stripped = text.replace(",", "").replace(".", "", 1).replace("x", "").replace("-", "").strip()
    return stripped.isdigit() or text == "-"


import argparse as _argparse


class HelpFormatter(_argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' except where the default is None (those helps say it themselves)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)
