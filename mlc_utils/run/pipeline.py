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
)
from mlc_utils.core.progress import EVENTS_ENV, EpochEnded, EventReader, FitStarted, duration
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
    status: str            # ran | skipped | failed | not run | earlier run
    seconds: float = 0.0
    notebook: Path | None = None
    error: str = ""


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

    What it knows of training it reads from the loop's typed events (``events``, the file ``run``
    names in ``MLC_EVENTS``; :mod:`mlc_utils.core.progress`), not from the printed lines: a model's
    time left comes from its epochs' own seconds, so a feature pass before epoch 1 is not an epoch,
    and the epoch's line gets it appended. ``planned`` (the plan's seconds for this stage) and
    ``later`` (for the stages after it) add the stage's and the run's time left: the plan's figure,
    or what the epochs measured if that is more."""

    def __init__(self, stage: str, log=print, clock=time.time, planned: float | None = None, later: float = 0.0,
                 events: str | os.PathLike | None = None):
        self.stage, self.log, self.clock = stage, log, clock
        self.planned, self.later = planned, later
        self.events = EventReader(events) if events else None
        self.buffer = ""
        self.stage_started = clock()
        self.epoch_seconds: list[float] = []
        self.notes: dict[str, str] = {}   # an epoch's line -> what to append when it is printed

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self.line(line.rstrip("\r"))
        return len(text)

    def flush(self) -> None:
        pass

    def line(self, line: str) -> None:
        if self.events is not None:
            for event in self.events.read():
                self.event(event)
        if line.strip():
            note = self.notes.pop(line, "")
            self.log(f"[{self.stage}] {line}{note}")

    def event(self, event) -> None:
        """Take one training event; an :class:`~mlc_utils.core.progress.EpochEnded` leaves the note
        its printed line will carry (the event is written just before the line is printed)."""
        if isinstance(event, FitStarted):
            self.epoch_seconds = []
        elif isinstance(event, EpochEnded):
            self.epoch_seconds.append(event.seconds)
            left = sum(self.epoch_seconds) / len(self.epoch_seconds) * (event.epochs - event.epoch)
            self.notes[event.line] = (f"  [{event.epoch}/{event.epochs} epochs, about {duration(left)} left for "
                                      f"this model{self.overall(self.clock(), left)}]")

    def overall(self, now: float, model_left: float) -> str:
        if self.planned is None:
            return ""
        stage_left = max(self.planned - (now - self.stage_started), model_left)
        return f", {duration(stage_left)} for the stage, {duration(stage_left + self.later)} for the run"


def ipc_kernel_manager(socket_dir: str | os.PathLike):
    """The kernel manager papermill starts a stage's kernel with: IPC sockets (files in
    ``socket_dir``, one fresh folder per stage) rather than TCP on localhost, so ipykernel has no
    unencrypted TCP transport to warn about ("Kernel is running over TCP without encryption",
    once per stage), and no two kernels (stages, runs, test sessions) share a socket path."""
    from jupyter_client.manager import AsyncKernelManager
    socket_prefix = str(Path(socket_dir) / "kernel")

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", socket_prefix)
            super().__init__(**kwargs)

    return IPCKernelManager


def execute_stage(study: Study, stage: str, key: str, log=print, retrain: bool = False,
                  planned: float | None = None, later: float = 0.0) -> StageResult:
    """Run one notebook with papermill; render its HTML whether it passed or failed.

    ``retrain``: forget the stage's saved members first, so they are trained again (``--force``).
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
    events = Path(socket_dir) / "events.jsonl"   # the loop's typed events (core.progress), this stage's only
    os.environ[EVENTS_ENV] = str(events)
    try:
        pm.execute_notebook(str(study.paths.notebook_in(stage)), str(out), parameters=parameters,
                            kernel_name=KERNEL_NAME, cwd=str(study.root / "notebooks"),
                            progress_bar=False, log_output=False, stdout_file=StageProgress(stage, log, planned=planned, later=later, events=events),
                            request_save_on_cell_execute=True, kernel_manager_class=ipc_kernel_manager(socket_dir))
    except pm.PapermillExecutionError as err:
        error = f"{out}: cell {err.exec_count} raised {err.ename}: {err.evalue}"
    except Exception as err:  # kernel died, notebook missing ...
        error = f"{out}: {type(err).__name__}: {err}"
    finally:
        os.environ.pop(EVENTS_ENV, None)
        shutil.rmtree(socket_dir, ignore_errors=True)
    seconds = time.time() - started
    from mlc_utils.run.report import render_notebook
    if out.is_file():
        render_notebook(out, study.paths.report_dir)
    if error:
        return StageResult(stage, "failed", seconds, out, error)
    atomic_write_text(stage_dir / MANIFEST, json.dumps(
        {"stage": stage, "key": key, "status": "ok", "run_id": uuid.uuid4().hex, "seconds": round(seconds, 1),
         "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
    return StageResult(stage, "ran", seconds, out)


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


def run_study(params_file: str | None, overrides: list[str] | dict = (), only: list[str] | None = None,
              force: bool = False, root: Path = PROJECT_ROOT, log=print, plan: bool = True) -> list[StageResult]:
    """Run (or skip) each stage in order; stop at the first failure. Returns one result per stage.

    ``plan``: print the plan of the stages that will run first (:func:`plan_wanted`)."""
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
    will_run = stages_to_run(study, chosen, data_fp, force) if plan_wanted(plan) else []
    plan = _print_plan(params, will_run, study.root, log) if will_run else None
    results: list[StageResult] = []
    for stage in chosen:
        missing = _missing_upstream(study, stage, chosen)
        if missing:
            results.append(StageResult(stage, "failed", error=f"stage '{stage}' needs {', '.join(missing)} "
                                                            "to have run first (add it to --only)"))
            log(f"[{stage}] {results[-1].error}")
            break
        key = stage_key(study, stage, data_fp)
        if not force and _unchanged(study, stage, key):
            results.append(StageResult(stage, "skipped", 0.0, study.paths.notebook_out(stage)))
            log(f"[{stage}] unchanged (notebook, parameters, data and inputs): skipped; use --force to re-run")
            continue
        log(f"[{stage}] running {study.paths.notebook_in(stage).relative_to(study.root)} ...")
        times = [plan.stage_seconds(s) if plan else None for s in chosen]
        at = chosen.index(stage)
        result = execute_stage(study, stage, key, log, retrain=force, planned=times[at],
                               later=sum(t or 0.0 for t in times[at + 1:]))
        results.append(result)
        if result.status == "failed":
            log(f"[{stage}] FAILED after {result.seconds:.0f}s: {result.error}")
            break
        log(f"[{stage}] done in {result.seconds:.0f}s -> {result.notebook.relative_to(study.root)}")
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
    except (ParamError, FileNotFoundError, PermissionError, OSError) as err:
        print(f"mlc_utils run: {err}", file=sys.stderr)
        return 2
    failed = [r for r in results if r.status == "failed"]
    if failed:
        print(f"mlc_utils run: stage '{failed[0].stage}' failed: {failed[0].error}", file=sys.stderr)
        return 1
    return 0
