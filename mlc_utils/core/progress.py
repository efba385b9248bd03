"""Progress for long loops (the feature pass, the batches of an epoch).

At a notebook a person gets tqdm's bar. Under ``run`` (the pipeline sets ``MLC_PROGRESS=lines``) a
bar would be pages of noise in the executed report and would never reach the terminal, so the loop
prints one line at most every ``MLC_PROGRESS_EVERY`` seconds (default 30) instead: the count, the
elapsed time and an estimate of the time left. The pipeline streams those lines to the terminal.

What the pipeline needs to *know* (a member or fold started, a model started, an epoch ended and took
S seconds) it does not read from those lines: the study's members and the training loop also write typed
events (:func:`emit`) to the file ``run`` names in ``MLC_EVENTS`` for each stage, and the pipeline reads
them back (:class:`EventReader`) for the time left (``mlc_utils.run.eta``) and to say where a stop happened.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

EVENTS_ENV = "MLC_EVENTS"


@dataclass(frozen=True)
class FitStarted:
    """A model starts training: the epochs it will run (``first`` > 0 when it resumes)."""
    epochs: int
    first: int = 0


@dataclass(frozen=True)
class EpochEnded:
    """An epoch ended after ``seconds``; ``line`` is what the loop printed for it."""
    epoch: int        # 1-based
    epochs: int
    seconds: float
    line: str = ""


@dataclass(frozen=True)
class MemberStarted:
    """A member (a trained model of the study) starts training, not when it is reused: ``fold`` of
    ``folds`` (1-based) when it is trained once per cross-validation fold, else 0 of 0."""
    name: str
    fold: int = 0
    folds: int = 0


@dataclass(frozen=True)
class MemberEnded:
    """A member (or one fold of it) is saved: trained, or ``reused`` unchanged from an earlier run."""
    name: str
    fold: int = 0
    folds: int = 0
    reused: bool = False


EVENT_TYPES = {cls.__name__: cls for cls in (FitStarted, EpochEnded, MemberStarted, MemberEnded)}


def emit(event) -> None:
    """Append ``event`` as one JSON line to the file named by ``MLC_EVENTS``; nothing when unset
    (at a notebook). One short append per event: rank 0 of a torchrun job writes beside the kernel."""
    path = os.environ.get(EVENTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"type": type(event).__name__, "time": time.time(), **asdict(event)}) + "\n")


class EventReader:
    """The events appended to ``path`` since the last :meth:`read` (a line still being written waits)."""

    def __init__(self, path: str | os.PathLike):
        self.path, self.offset = Path(path), 0

    def read(self) -> list:
        return [event for _, event in self.read_timed()]

    def read_timed(self) -> list[tuple[float | None, object]]:
        """(when it was written, by the process's clock ``time.time()``, or None; the event) pairs."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        events = []
        for raw in complete.decode("utf-8").splitlines():
            fields = json.loads(raw)
            when = fields.pop("time", None)
            events.append((when, EVENT_TYPES[fields.pop("type")](**fields)))
        return events


def duration(seconds: float) -> str:
    """Seconds as people read a wait: 45 s, 12 min, 3.5 h."""
    seconds = max(float(seconds), 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


class LineProgress:
    """Iterate ``iterable``; every ``every`` seconds (and once at the end, if it lasted that long)
    print ``desc: k/N (p%), elapsed, about T left``. ``set_postfix`` and ``close`` as tqdm's."""

    def __init__(self, iterable: Iterable, desc: str, total: int | None = None, every: float = 30.0,
                 clock=time.monotonic, out=print):
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable, self.desc, self.total, self.every, self.clock, self.out = \
            iterable, desc, total, every, clock, out
        self.done, self.postfix, self.closed = 0, "", False
        self.start = self.last = clock()

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.done += 1
            now = self.clock()
            if now - self.last >= self.every:
                self.last = now
                self._print(now)
        self.close()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            now = self.clock()
            if now - self.start >= self.every:
                self._print(now)

    def _print(self, now: float) -> None:
        line = _line(self.desc, self.done, self.total, now - self.start)
        self.out(f"{line}, {self.postfix}" if self.postfix else line, flush=True)


def line_progress(iterable: Iterable, desc: str, total: int | None = None, every: float = 30.0,
                  clock=time.monotonic, out=print) -> LineProgress:
    return LineProgress(iterable, desc, total, every, clock, out)


def _line(desc: str, done: int, total: int | None, elapsed: float) -> str:
    if not total:
        return f"{desc}: {done} done, {duration(elapsed)} elapsed"
    left = elapsed / max(done, 1) * (total - done)
    return f"{desc}: {done}/{total} ({done / total:.0%}), {duration(elapsed)} elapsed, about {duration(left)} left"


def progress(iterable: Iterable, desc: str, total: int | None = None, disable: bool = False, **tqdm_options):
    """tqdm's bar at a notebook or terminal; periodic lines under ``run`` (``MLC_PROGRESS=lines``)."""
    if os.environ.get("MLC_PROGRESS") == "lines" and not disable:
        return line_progress(iterable, desc, total, every=float(os.environ.get("MLC_PROGRESS_EVERY", "30")))
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, total=total, disable=disable, **tqdm_options)


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR):
    """The named loggers held at ``level`` while the block runs: libraries that speak where the project
    says what happened in its own words (papermill's and zmq's records after a stop, a converter's
    warnings about attributes it walked past)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, levels):
            logger.setLevel(old)
