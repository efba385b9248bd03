"""Run the study: execute the stage notebooks in order with papermill and render the reports.

Each stage runs ``notebooks/NN_<stage>.ipynb`` into ``runs/<run>/NN_<stage>.ipynb`` and writes its
artifacts under ``runs/<run>/<stage>/``. A stage is skipped when its *key* is unchanged: the hash of
its notebook, its parameters (common keys + its section), the data's checksums and the keys of the
stages it reads. The key is recorded in ``runs/<run>/<stage>/stage.json``, written last and
atomically, and removed before a stage starts: a stage killed half-way is never trusted (and the
temporaries its killed writes left in its folder are deleted before it re-runs).

Before any stage runs, ``runs/<run>`` and ``reports/<run>`` must be writable and the disk must hold
``MIN_FREE_MB`` MiB (environment variable ``MLC_MIN_FREE_MB`` overrides it), so a full disk or a
read-only folder fails at once, not after hours of training.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mlc_utils.core.config import current_choice
from mlc_utils.core.fingerprint import data_fingerprint, source_digest
from mlc_utils.core.io import (
    atomic_write_text,
    ensure_writable_dir,
    remove_stale_temporaries,
    sha256_file,
    size_text,
)
from mlc_utils.core.processes import child_subreaper, children, end_orphans
from mlc_utils.core.progress import EVENTS_ENV, EpochEnded, EventReader, duration
from mlc_utils.run.eta import RunClock, StageClock
from mlc_utils.run.kernel import KernelWatch, StopOnInterrupt, kernel_manager
from mlc_utils.study.context import MANIFEST, PROJECT_ROOT, StudyPaths
from mlc_utils.study.params import (
    ParamError,
    StudyParams,
    load_params,
    parse_override,
    stage_fingerprint,
)
from mlc_utils.study.stages import RENAMED_STAGES, STAGE_NAMES, STAGES

KERNEL_NAME = "mlc"
MIN_FREE_MB = 1024  # checkpoints, executed notebooks and reports: refuse to start a run with less free


@dataclass
class StageResult:
    stage: str
    status: str            # ran | skipped | failed | interrupted | not run | earlier run
    seconds: float = 0.0
    notebook: Path | None = None
    error: str = ""
    where: str = ""        # interrupted: the cell and member it was in


@dataclass
class Study:
    """One run of the study: its parameters, the ``--set`` overrides they came with, and its paths."""
    params: StudyParams
    overrides: dict = field(default_factory=dict)
    root: Path = PROJECT_ROOT

    @property
    def paths(self) -> StudyPaths:
        return StudyPaths(self.root, self.params.run)


def min_free_bytes() -> int:
    """The free space a run needs to start: ``MLC_MIN_FREE_MB`` (MiB) if set, else ``MIN_FREE_MB``."""
    raw = os.environ.get("MLC_MIN_FREE_MB", "").strip()
    try:
        mib = float(raw) if raw else MIN_FREE_MB
    except ValueError:
        raise ParamError(f"environment variable MLC_MIN_FREE_MB: expected a number of MiB, got {raw!r}") from None
    return int(max(mib, 0) * 2**20)


def stage_key(study: Study, stage: str, data_fp: dict) -> str:
    """What a stage's result depends on: its notebook, parameters, data, the library's code, and the
    very run of each stage it reads (a re-run upstream, even an unchanged one, re-runs it)."""
    upstream = {}
    for dep in STAGES[stage].reads:
        manifest = study.paths.manifest(dep)
        upstream[dep] = [manifest.get("key"), manifest.get("run_id")] \
            if manifest and manifest.get("status") == "ok" else None
    payload = {
        "notebook": sha256_file(study.paths.notebook_in(stage)),
        "params": stage_fingerprint(study.params, stage),
        "data": data_fp,
        "upstream": upstream,
        "library": source_digest(["mlc_utils"]),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _missing_upstream(study: Study, stage: str, chosen: list[str]) -> list[str]:
    return [dep for dep in STAGES[stage].reads
            if dep not in chosen and not (study.paths.manifest(dep) or {}).get("status") == "ok"]


def invalidate_members(stage_dir: Path) -> list[Path]:
    """Forget the trained members saved under ``stage_dir`` (``run --force``): the next run of the
    stage retrains them instead of reusing them. Their files stay until they are overwritten."""
    from mlc_utils.study.members import MEMBER_FILE
    records = sorted(stage_dir.glob(f"*/{MEMBER_FILE}")) + sorted(stage_dir.glob(MEMBER_FILE))
    for path in records:
        path.unlink(missing_ok=True)
    return records


class StageProgress:
    """A file-like sink for the kernel's streamed stdout (papermill's ``stdout_file``): each line goes
    to the terminal (``log``) as the cell prints it, prefixed with the stage.

    What it knows of training it reads from the typed events of the members and the loop (``events``,
    the file ``run`` names in ``MLC_EVENTS``; :mod:`mlc_utils.core.progress`), not from the printed
    lines: an epoch's line gets the time left appended (:mod:`mlc_utils.run.eta`): for this model, and
    with a plan (``planned``: its seconds for this stage, ``trainings``: for each training of the stage;
    ``later``: the run's time after this stage, ``ratio``: how the finished stages compared with
    their plan) for the stage and the run. ``record`` receives each time left printed (the run's
    ``eta.jsonl``)."""

    def __init__(self, stage: str, log=print, clock=time.time, planned: float | None = None, later: float | None = 0.0,
                 events: str | os.PathLike | None = None, trainings: list[float] | None = None, ratio: float = 1.0,
                 record=None):
        self.stage, self.log, self.clock = stage, log, clock
        self.later, self.record = later, record
        self.events = EventReader(events) if events else None
        self.buffer = ""
        self.eta = StageClock(planned, list(trainings or []), clock(), ratio)
        self.notes: dict[str, str] = {}   # an epoch's line -> what to append when it is printed

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self.line(line.rstrip("\r"))
        return len(text)

    def flush(self) -> None:
        pass

    def poll(self) -> None:
        """Take the events written since the last look."""
        if self.events is not None:
            for when, event in self.events.read_timed():
                self.event(event, self.clock() if when is None else when)

    def line(self, line: str) -> None:
        self.poll()
        if line.strip():
            note = self.notes.pop(line, "")
            self.log(f"[{self.stage}] {line}{note}")

    def event(self, event, when: float | None = None) -> None:
        """Take one event; an :class:`~mlc_utils.core.progress.EpochEnded` leaves the note its printed
        line will carry (the event is written just before the line is printed)."""
        when = self.clock() if when is None else when
        self.eta.event(event, when)
        if isinstance(event, EpochEnded):
            self.notes[event.line] = (f"  [{event.epoch}/{event.epochs} epochs, about {duration(self.eta.model_left() or 0.0)} "
                                      f"left for this model{self.overall(when)}]")

    def overall(self, now: float) -> str:
        stage_left = self.eta.left(now)
        if stage_left is None:
            return ""
        if self.eta.planned is None:   # no plan: the stage's folds still to come, no run figure
            return f", {duration(stage_left)} for the stage" if self.eta.folds > self.eta.fold else ""
        if self.later is None:   # a later stage has no time in the plan
            return f", {duration(stage_left)} for the stage"
        run_left = stage_left + self.later
        if self.record is not None:
            self.record({"event": "eta", "time": round(now, 3), "stage": self.stage, "member": self.eta.member,
                         "fold": self.eta.fold, "folds": self.eta.folds, "epoch": self.eta.done,
                         "epochs": self.eta.epochs, "model_left": round(self.eta.model_left() or 0.0, 2),
                         "stage_left": round(stage_left, 2), "run_left": round(run_left, 2)})
        return f", {duration(stage_left)} for the stage, {duration(run_left)} for the run"

    def where(self) -> str:
        """The member and epoch the stage is in, for a message ("training vit (fold 2 of 5, epoch 4 of 30)")."""
        self.poll()
        eta = self.eta
        if not eta.active:
            return ""
        parts = [f"fold {eta.fold} of {eta.folds}"] if eta.folds else []
        if eta.epochs and eta.done < eta.epochs:
            parts.append(f"epoch {eta.done + 1} of {eta.epochs}")
        return f"training {eta.member}" + (f" ({', '.join(parts)})" if parts else "")


def execute_stage(study: Study, stage: str, key: str, log=print, retrain: bool = False,
                  progress: StageProgress | None = None, stop: StopOnInterrupt | None = None) -> StageResult:
    """Run one notebook with papermill; render its HTML whether it passed or failed (not when stopped).

    ``retrain``: forget the stage's saved members first, so they are trained again (``--force``).
    ``progress``: the sink of the cells' output (a plain :class:`StageProgress` by default); ``stop``:
    the run's Ctrl-C handling, told of this stage's kernel (:mod:`mlc_utils.run.kernel`). The kernel
    process's own output goes to ``runs/<run>/<stage>/kernel.log``; what it leaves running is ended.
    """
    import papermill as pm
    stage_dir = study.paths.stage_dir(stage)
    (stage_dir / MANIFEST).unlink(missing_ok=True)
    stage_dir.mkdir(parents=True, exist_ok=True)
    if retrain:
        forgotten = invalidate_members(stage_dir)
        if forgotten:
            log(f"[{stage}] --force: {len(forgotten)} saved member(s) will be trained again")
    for path in remove_stale_temporaries(stage_dir):
        log(f"[{stage}] removed {path.name}, left in {stage_dir} by an interrupted write")
    out = study.paths.notebook_out(stage)
    parameters = {
        "params_file": str(Path(study.params.source).resolve()) if study.params.source else "",
        "overrides": dict(study.overrides),
        "project_root": str(study.root),
    }
    started = time.time()
    error = ""
    # progress bars are for people at a notebook; in an executed report they are pages of noise.
    # What the cells print (the epochs, the members trained or reused) streams to the terminal
    # line by line instead (StageProgress), and the executed notebook is saved as each cell ends.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("MLC_PROGRESS", "lines")  # long loops print a line every 30 s (core.progress)
    os.environ.setdefault("MLC_WIDGETS", "0")  # no browser drives ipywidgets here (08_explore shows static views)
    # kernels and their torchrun workers start on tcmalloc where it is installed (core.allocator)
    from mlc_utils.core.allocator import allocator_env
    os.environ.update(allocator_env())
    socket_dir = tempfile.mkdtemp(prefix="mlc-kernel-")
    events = Path(socket_dir) / "events.jsonl"   # the members' and loop's typed events (core.progress), this stage's only
    os.environ[EVENTS_ENV] = str(events)
    progress = progress or StageProgress(stage, log)
    progress.events = EventReader(events)
    stop = stop or StopOnInterrupt()
    watch = KernelWatch()
    kernel_log = stage_dir / KERNEL_LOG
    kernel_log.unlink(missing_ok=True)
    before = children()
    with _quiet_jupyter(), child_subreaper(), stop.watching(watch):
        try:
            pm.execute_notebook(str(study.paths.notebook_in(stage)), str(out), parameters=parameters,
                                kernel_name=KERNEL_NAME, cwd=str(study.root / "notebooks"),
                                progress_bar=False, log_output=False, stdout_file=progress,
                                request_save_on_cell_execute=True, on_cell_start=watch.on_cell_start,
                                kernel_manager_class=kernel_manager(socket_dir, watch, kernel_log))
        except pm.PapermillExecutionError as err:
            error = f"{_shown(out, study.root)}: cell {err.exec_count} raised {err.ename}: {err.evalue}"
        except Exception as err:  # kernel died, Ctrl-C between cells, notebook missing ...
            error = f"{_shown(out, study.root)}: {type(err).__name__}: {err}"
            code = watch.returncode()   # a cell's own error is above: papermill then ends the kernel itself
            if code not in (0, None):
                error = _kernel_ended(stage, code, watch, progress, kernel_log, study.root)
        finally:
            watch.close()
            os.environ.pop(EVENTS_ENV, None)
            end_orphans(before)   # what a killed kernel left running (torchrun and its workers)
            shutil.rmtree(socket_dir, ignore_errors=True)
    seconds = time.time() - started
    if stop.requested:
        return StageResult(stage, "interrupted", seconds, out, where=_where(watch, progress))
    from mlc_utils.run.report import render_notebook
    if out.is_file():
        render_notebook(out, study.paths.report_dir)
    if error:
        return StageResult(stage, "failed", seconds, out, error)
    atomic_write_text(stage_dir / MANIFEST, json.dumps(
        {"stage": stage, "key": key, "status": "ok", "run_id": uuid.uuid4().hex, "seconds": round(seconds, 1),
         "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
    return StageResult(stage, "ran", seconds, out)


KERNEL_LOG = "kernel.log"   # in the stage's folder: the kernel process's own stdout and stderr


def _shown(path: Path, root: Path) -> str:
    """``path`` relative to the project, as a person at its root reads it."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _where(watch: KernelWatch, progress: StageProgress) -> str:
    """"cell 3, training vit (fold 2 of 5, epoch 4 of 30)": what the kernel was doing."""
    cell = f"cell {watch.cell}" if watch.cell else "before its first cell"
    member = progress.where()
    return f"{cell}, {member}" if member else cell


def _kernel_ended(stage: str, code: int, watch: KernelWatch, progress: StageProgress, kernel_log: Path,
                  root: Path) -> str:
    """One line for a kernel that died under a cell: how, where, its peak memory and what to try."""
    where = _where(watch, progress)
    peak = f", at a peak of {size_text(watch.peak)} of memory" if watch.peak else ""
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        how = f"its kernel was killed by {name} in {where}{peak}"
    else:
        how = f"its kernel exited with status {code} in {where}{peak}"
    if code == -signal.SIGKILL:
        batch = f"{stage}.train.batch_size or " if stage in ("image", "caption", "fusion", "ablation") else ""
        how += (f"; the out-of-memory killer ends a process so when memory runs out: "
                f"try a smaller batch ({batch}inference.batch_size)")
    if kernel_log.is_file() and kernel_log.stat().st_size:
        how += f" (the kernel's own output: {_shown(kernel_log, root)})"
    return how




def _quiet_jupyter():
    """papermill's and nbclient's log records ("Kernel died while waiting for execute reply") and
    asyncio's ("Task exception was never retrieved") while a stage runs: ``run`` says what happened
    in one line of its own."""
    import logging

    from mlc_utils.core.progress import quiet_loggers
    return quiet_loggers("papermill", "nbclient", "traitlets", "asyncio", level=logging.CRITICAL)


def _unchanged(study: Study, stage: str, key: str) -> bool:
    """Whether ``stage`` ran before with ``key`` and its executed notebook is there (skip it)."""
    manifest = study.paths.manifest(stage)
    return bool(manifest) and manifest.get("key") == key and manifest.get("status") == "ok" \
        and study.paths.notebook_out(stage).is_file()


def stages_to_run(study: Study, chosen: list[str], data_fp: dict, force: bool = False) -> list[str]:
    """The stages of ``chosen`` a run will execute: the changed ones, and every one that reads a stage
    that runs (its new run changes their key)."""
    out: list[str] = []
    for stage in chosen:
        if force or any(dep in out for dep in STAGES[stage].reads) or \
                not _unchanged(study, stage, stage_key(study, stage, data_fp)):
            out.append(stage)
    return out


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run: ``line`` says where, and what the next run keeps and runs."""

    def __init__(self, line: str, results: list[StageResult] | None = None):
        super().__init__(line)
        self.line, self.results = line, list(results or [])


def run_study(params_file: str | None, overrides: list[str] | dict = (), only: list[str] | None = None,
              force: bool = False, root: Path = PROJECT_ROOT, log=print, plan: bool = True) -> list[StageResult]:
    """Run (or skip) each stage in order; stop at the first failure. Returns one result per stage.

    ``plan``: print the plan of the stages that will run first (:func:`plan_wanted`). Ctrl-C (SIGINT)
    stops the run wherever it is (:class:`~mlc_utils.run.kernel.StopOnInterrupt`) and raises
    :class:`RunInterrupted`, whose line says where and what the next run will do."""
    override_map = dict(parse_override(o) for o in overrides) if not isinstance(overrides, dict) else dict(overrides)
    params = load_params(params_file, override_map)
    study = Study(params, override_map, Path(root))
    only = [current_choice(s, RENAMED_STAGES, f"--only {s}") for s in only or ()]
    chosen = [s for s in params.stages if not only or s in only]
    if only:
        unknown = [s for s in only if s not in STAGE_NAMES]
        if unknown:
            raise ParamError(f"--only: unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGE_NAMES)}")
        not_enabled = [s for s in only if s not in params.stages]
        if not_enabled:
            raise ParamError(f"--only: stage(s) {', '.join(not_enabled)} are not in this params file's 'stages'")
    state = _RunState(study, chosen)
    with StopOnInterrupt() as stop:
        try:
            return _run_stages(study, chosen, force, log, plan, stop, state)
        except RunInterrupted:
            raise
        except KeyboardInterrupt:   # between stages, while planning or writing the report
            raise RunInterrupted(state.stopped_line(), state.results) from None


@dataclass
class _RunState:
    """Where a run is, for the line Ctrl-C prints."""
    study: Study
    chosen: list[str]
    phase: str = "before the first stage"
    data_fp: dict | None = None
    results: list[StageResult] = field(default_factory=list)

    def stopped_line(self, result: StageResult | None = None) -> str:
        """"stopped (Ctrl-C) in stage image, cell 3, training vit (epoch 4 of 30); the next run keeps
        split, reuses image's saved members (...) and runs image, caption, fusion, ensemble"."""
        head = f"stopped (Ctrl-C) in stage {result.stage}, {result.where}" if result else f"stopped (Ctrl-C) {self.phase}"
        if self.data_fp is None:
            return f"{head}; no stage had started"
        next_run = stages_to_run(self.study, self.chosen, self.data_fp)
        kept = [s for s in self.chosen if s not in next_run]
        parts = [f"keeps {', '.join(kept)}"] if kept else []
        members = _saved_members(self.study.paths.stage_dir(result.stage)) if result else []
        if members:
            parts.append(f"reuses {result.stage}'s saved members ({', '.join(members)})")
        parts.append(f"runs {', '.join(next_run)}" if next_run else "has nothing left to run")
        said = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
        return f"{head}; the next run {said}"


def _saved_members(stage_dir: Path) -> list[str]:
    """The members saved in ``stage_dir`` (a member, or the folds saved of one): ``vit``, ``eff folds 1, 2``."""
    from mlc_utils.study.members import MEMBER_FILE
    found = []
    for folder in sorted(p for p in stage_dir.iterdir() if p.is_dir()) if stage_dir.is_dir() else []:
        if (folder / MEMBER_FILE).is_file():
            found.append(folder.name)
            continue
        folds = sorted(int(f.name[4:]) + 1 for f in folder.glob("fold*")
                       if f.name[4:].isdigit() and (f / MEMBER_FILE).is_file())
        if folds:
            found.append(f"{folder.name} fold{'s' if len(folds) > 1 else ''} {', '.join(map(str, folds))}")
    return found


def _run_stages(study: Study, chosen: list[str], force: bool, log, plan: bool, stop: StopOnInterrupt,
                state: _RunState) -> list[StageResult]:
    params = study.params
    from mlc_utils.study.preflight import preflight
    problems = preflight(params, chosen, study.root, log)
    if problems:
        raise ParamError("cannot start: " + "; ".join(problems))
    data_dir = params.data_path(study.root)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data_dir {data_dir} does not exist (params 'data_dir'; set it with --set data_dir=...)")
    need = min_free_bytes()
    try:
        ensure_writable_dir(study.paths.run_dir, need)
    except PermissionError:
        raise
    except OSError as err:
        raise OSError(f"{err} to start a run (set MLC_MIN_FREE_MB to change this minimum)") from None
    ensure_writable_dir(study.paths.report_dir)
    data_fp = data_fingerprint(data_dir)
    state.data_fp = data_fp
    will_run = stages_to_run(study, chosen, data_fp, force) if plan_wanted(plan) else []
    state.phase = "while planning, before the first stage"
    plan = _print_plan(params, will_run, study.root, log) if will_run else None
    clock = RunClock({s: plan.stage_seconds(s) for s in will_run} if plan else {})
    record = EtaLog(study.paths.run_dir / ETA_LOG, {"stages": will_run, "planned": clock.planned})
    results = state.results
    for stage in chosen:
        state.phase = f"before stage {stage}"
        missing = _missing_upstream(study, stage, chosen)
        if missing:
            results.append(StageResult(stage, "failed", error=f"stage '{stage}' needs {', '.join(missing)} "
                                                            "to have run first (add it to --only)"))
            break
        key = stage_key(study, stage, data_fp)
        if not force and _unchanged(study, stage, key):
            results.append(StageResult(stage, "skipped", 0.0, study.paths.notebook_out(stage)))
            log(f"[{stage}] unchanged (notebook, parameters, data and inputs): skipped; use --force to re-run")
            continue
        log(f"[{stage}] running {study.paths.notebook_in(stage).relative_to(study.root)} ...")
        trainings = [t.seconds or 0.0 for s in plan.stages if s.stage == stage for t in s.trainings] if plan else []
        progress = StageProgress(stage, log, planned=clock.planned.get(stage), later=clock.after(stage),
                                 trainings=trainings, ratio=clock.ratio, record=record)
        record({"event": "stage_started", "stage": stage, "time": round(time.time(), 3),
                "planned": clock.planned.get(stage), "ratio": round(clock.ratio, 3)})
        state.phase = f"in stage {stage}"
        result = execute_stage(study, stage, key, log, retrain=force, progress=progress, stop=stop)
        results.append(result)
        record({"event": "stage_ended", "stage": stage, "time": round(time.time(), 3),
                "seconds": round(result.seconds, 2), "status": result.status})
        if result.status == "interrupted":
            raise RunInterrupted(state.stopped_line(result), results)
        if result.status == "failed":
            break
        clock.stage_ended(stage, result.seconds)
        log(f"[{stage}] done in {result.seconds:.0f}s -> {result.notebook.relative_to(study.root)}")
        if stop.requested:   # Ctrl-C as the stage ended: it finished, stop before the next
            state.phase = f"after stage {stage} finished"
            raise KeyboardInterrupt
    record({"event": "run_ended", "time": round(time.time(), 3),
            "status": "failed" if any(r.status == "failed" for r in results) else "ok"})
    state.phase = "while writing the report, after the stages"
    done = {r.stage for r in results}
    results += [StageResult(s, "not run") for s in chosen if s not in done]
    # stages outside --only keep their earlier result on the index page
    earlier = {s: StageResult(s, "earlier run", 0.0, study.paths.notebook_out(s)) for s in params.stages
               if s not in chosen and (study.paths.manifest(s) or {}).get("status") == "ok"}
    order = {s: i for i, s in enumerate(params.stages)}
    shown = sorted(results + list(earlier.values()), key=lambda r: order[r.stage])
    from mlc_utils.run.report import write_index, write_pdf
    index = write_index(study, shown)
    log(f"report: {index}")
    pdf = write_pdf(index, log)
    if pdf is not None:
        log(f"report: {pdf}")
    return results


ETA_LOG = "eta.jsonl"   # runs/<run>/: every time left the run printed, with the stages' starts and ends


class EtaLog:
    """Appends JSON lines to ``runs/<run>/eta.jsonl``, started afresh by each run (``benchmarks/eta_accuracy.py``
    compares what was printed with the time that was left). A log: a write that fails is skipped."""

    def __init__(self, path: Path, start: dict):
        self.path = path
        try:
            atomic_write_text(path, json.dumps({"event": "run_started", "time": round(time.time(), 3), **start}) + "\n")
        except OSError:
            pass

    def __call__(self, record: dict) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError:
            pass


PLAN_CALIBRATION_S = 30.0   # run's plan: architectures left untimed past this much calibration
PLAN_ENV = "MLC_PLAN"       # "off" (or 0, no, false): run prints no plan and calibrates nothing


def plan_wanted(flag: bool = True) -> bool:
    """Whether ``run`` prints its plan: not with ``--no-plan`` (``flag`` False) nor with ``MLC_PLAN=off``."""
    return flag and os.environ.get(PLAN_ENV, "").strip().lower() not in ("off", "0", "no", "false")


def _print_plan(params, chosen, root, log):
    """The plan (:mod:`mlc_utils.study.plan`) of the stages ``chosen`` (those that will run) before the
    first one, with a bounded calibration (cached: paid once a machine); a plan that cannot be made is
    said and never stops the run."""
    from mlc_utils.study.plan import make_plan
    try:
        plan = make_plan(params, root, chosen, budget_s=PLAN_CALIBRATION_S)
    except Exception as err:  # noqa: BLE001 - the plan informs; the run goes on without it
        log(f"plan: not available ({type(err).__name__}: {err})")
        return None
    for line in plan.render().splitlines():
        log(line)
    return plan


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlc_utils run",
                                     description="Execute the study's notebooks with papermill and render HTML reports.")
    parser.add_argument("--params", required=True, help="params YAML, e.g. params/demo.yaml")
    parser.add_argument("--only", nargs="+", metavar="STAGE", help=f"run only these stages ({', '.join(STAGE_NAMES)})")
    parser.add_argument("--force", action="store_true", help="re-run stages even when unchanged")
    parser.add_argument("--no-plan", action="store_true",
                        help=f"print no plan before the first stage (no calibration; also {PLAN_ENV}=off)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. --set data_dir=/elsewhere --set image.train.epochs=2")
    args = parser.parse_args(argv)
    try:
        results = run_study(args.params, args.overrides, args.only, args.force,
                            log=lambda line: print(line, flush=True), plan=not args.no_plan)
    except RunInterrupted as stopped:
        print(f"mlc_utils run: {stopped.line}", file=sys.stderr, flush=True)
        return 130
    except KeyboardInterrupt:   # before the parameters were read
        print("mlc_utils run: stopped (Ctrl-C) before any stage started", file=sys.stderr, flush=True)
        return 130
    except (ParamError, FileNotFoundError, PermissionError, OSError) as err:
        print(f"mlc_utils run: {err}", file=sys.stderr)
        return 2
    failed = [r for r in results if r.status == "failed"]
    if failed:
        print(f"mlc_utils run: stage '{failed[0].stage}' failed after {failed[0].seconds:.0f} s: {failed[0].error}",
              file=sys.stderr)
        return 1
    return 0
