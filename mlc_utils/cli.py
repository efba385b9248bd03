"""``python -m mlc_utils COMMAND ...``: a small dispatcher over the library.

Each command lives in the module that does the work and exposes ``cli(argv) -> int``; this file
only maps names to them (imported lazily, so ``validate`` does not pay for importing torch).
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "validate": ("mlc_utils.data.folder", "check a data folder: both CSVs and every image"),
    "demo-data": ("mlc_utils.data.demo", "write a synthetic dataset in the competition layout"),
    "plan": ("mlc_utils.study.plan", "print a run's work, time, disk and peak memory, stage by stage"),
    "run": ("mlc_utils.run.pipeline", "execute the notebooks with papermill and render the reports"),
    "predict": ("mlc_utils.evaluation.predict", "predict a CSV with a checkpoint and write a Kaggle submission"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items())
    return f"usage: python -m mlc_utils COMMAND [options]\n\ncommands:\n{rows}\n\n" \
           "Run 'python -m mlc_utils COMMAND --help' for a command's options."


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"mlc_utils: unknown command '{name}'{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.cli(rest) or 0)
