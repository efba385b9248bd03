"""Reliability, stops as a person at a terminal meets them: Ctrl-C and a killed kernel are one line each.

* Ctrl-C typed into ``python -m mlc_utils run`` through a pseudo-terminal (the terminal's line
  discipline sends SIGINT to the foreground process group, as a real Ctrl-C does; ``kill -INT`` from
  a script to a background process is not that) while the image stage trains, with DataLoader
  workers: one line naming the stage, cell and member and what the next run does, exit status 130,
  no process of the run left, and the next run ends with the submission of an uninterrupted run.
* The same inside a torchrun job (torchrun and its workers have sessions of their own).
* The kernel killed with SIGKILL (as the out-of-memory killer does): one line with the signal, the
  kernel's peak memory and what to try, and a clean re-run.
* Ctrl-C between stages: the same kind of line, from the run's own bookkeeping.

Every wait ends on an event (a line printed, a process ending); HANG_GUARD only stops a test that would hang.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import PROJECT, make_project

from mlc_utils.core.io import is_temporary
from mlc_utils.run import pipeline
from mlc_utils.run.kernel import KernelWatch, StopOnInterrupt, StopRequested

HANG_GUARD = 1800.0   # generous: a run of five stages on a loaded 2-core machine
TAG = "MLC_TEST_RUN_TAG"   # every process of a run inherits it: what is left of the run is found by it

# ``python -m mlc_utils run`` with the project root set to the test's folder
RUN = ("import functools, sys; from pathlib import Path; from mlc_utils.run import pipeline; "
       "pipeline.run_study = functools.partial(pipeline.run_study, root=Path(sys.argv[1])); "
       "sys.exit(pipeline.cli(sys.argv[2:]))")

STUDY = """
run: t
data_dir: {data}
seed: 3407
stages: [split, image, caption, fusion, ensemble]
split: {{val_fraction: 0.3}}
image:
  tta: [center]
  cache_dir: {cache}
  models:
    - {{label: vit, name: test_vit, pretrained: false, img_size: 32,
        train: {{epochs: 8, batch_size: 8, num_workers: 1, progress: false}}}}
caption:
  members: [frozen_encoder]
  pretrained: false
  max_length: 16
  head_train: {{epochs: 2, batch_size: 8, progress: false}}
fusion: {{heads: [concat], train: {{epochs: 2, progress: false}}}}
ensemble: {{weights: score}}
"""


def _project(tmp_path: Path, data: Path, name: str, study: str = STUDY) -> tuple[Path, Path]:
    root, params = make_project(tmp_path / name, data)
    params.write_text(study.format(data=data, cache=tmp_path / name / "cache"))
    return root, params


def _env(tag: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(PROJECT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
            "PYTHONUNBUFFERED": "1", TAG: tag}


def _in_terminal(args: list[str], env: dict, type_ctrl_c_after: str | None = None, on_line=None) -> tuple[int, str, int]:
    """Run ``args`` in a new pseudo-terminal; once a line containing ``type_ctrl_c_after`` is printed,
    type Ctrl-C (or call ``on_line(line)`` for every line). Returns (exit status, output, where in
    the output Ctrl-C was typed)."""
    pid, fd = pty.fork()
    if pid == 0:   # the child: a session leader whose controlling terminal is the pty, in the foreground
        try:
            # as a terminal's shell starts a foreground job: SIGINT at its default even where this test
            # runs as a background job of a script (which starts with SIGINT ignored, and run keeps that)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execve(sys.executable, [sys.executable, *args], env)
        finally:
            os._exit(127)
    out, typed_at, seen = b"", -1, 0
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], HANG_GUARD)
            if not ready:
                raise AssertionError(f"no output for {HANG_GUARD:.0f} s:\n{out.decode(errors='replace')}")
            try:
                data = os.read(fd, 65536)
            except OSError:   # EIO: every process holding the terminal has ended
                break
            if not data:
                break
            out += data
            lines = out.decode(errors="replace").split("\n")
            for line in lines[seen:-1]:
                if on_line is not None:
                    on_line(line)
                if type_ctrl_c_after is not None and typed_at < 0 and type_ctrl_c_after in line:
                    os.write(fd, b"\x03")   # the terminal turns it into SIGINT to the foreground group
                    typed_at = len(out)
            seen = len(lines) - 1
        _, status = os.waitpid(pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)   # only when the test failed half-way
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace").replace("\r\n", "\n"), typed_at


def _tagged(tag: str) -> list[int]:
    """Running processes (not zombies) that inherited ``TAG=tag``."""
    found = []
    needle = f"{TAG}={tag}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError, IndexError):
            if needle in environ.read_bytes().split(b"\0"):
                state = (environ.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in "ZX":
                    found.append(int(environ.parent.name))
    return found


def _no_process_left(tag: str) -> list[int]:
    """The processes of the run still running once each found has had its chance to end (pidfd waits)."""
    for pid in _tagged(tag):
        with contextlib.suppress(ProcessLookupError, OSError):
            pidfd = os.pidfd_open(pid)
            try:
                select.select([pidfd], [], [], 10.0)
            finally:
                os.close(pidfd)
    return _tagged(tag)


def _lines(output: str) -> list[str]:
    return [line.removeprefix("^C").strip() for line in output.split("\n") if line.removeprefix("^C").strip()]


def _only_run_lines(output: str) -> list[str]:
    """Lines that are neither a stage's streamed line nor a line of ``run`` itself (tracebacks, warnings)."""
    own = re.compile(r"^(\[(split|image|caption|fusion|ensemble)\] |mlc_utils run: |report: )")
    return [line for line in _lines(output) if not own.match(line)]


def _temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*") if p.is_file() and is_temporary(p))


@pytest.mark.slow
def test_ctrl_c_in_a_cell_is_one_line_exit_130_nothing_left_and_the_rerun_finishes_the_same(tmp_path, tiny_data):
    straight_root, straight_params = _project(tmp_path, tiny_data, "straight")
    root, params = _project(tmp_path, tiny_data, "stopped")
    straight = subprocess.Popen([sys.executable, "-c", RUN, str(straight_root), "--params", str(straight_params)],
                                env=_env(uuid.uuid4().hex), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    try:
        tag = uuid.uuid4().hex
        code, output, typed_at = _in_terminal(["-c", RUN, str(root), "--params", str(params)], _env(tag),
                                              type_ctrl_c_after="[image] epoch 1/8")
        assert typed_at > 0, output
        assert code == 130, output
        assert "Traceback" not in output and "KeyboardInterrupt" not in output and "Error" not in output, output
        assert _only_run_lines(output) == [], output
        said = [line for line in _lines(output) if line.startswith("mlc_utils run:")]
        assert said == [_lines(output)[-1]], output   # one line, the last
        # Ctrl-C is typed once "epoch 1/8" reaches the terminal; the epoch lines come through the kernel's
        # output stream, so on a loaded machine the model may have finished its 8 short epochs (and been
        # saved) before the line is seen: then the line names it as saved, for the next run to reuse.
        assert re.fullmatch(r"mlc_utils run: stopped \(Ctrl-C\) in stage image, cell \d+"
                            r"(, training vit( \(epoch \d+ of 8\))?)?; the next run keeps split"
                            r"(, reuses image's saved members \(vit\))? and runs image, caption, fusion, ensemble",
                            said[0]), said[0]
        assert "vit" in said[0], said[0]   # the member it was in, or the one it saved
        assert _no_process_left(tag) == [], "processes of the stopped run still run (kernel, DataLoader workers)"
        run = root / "runs" / "t"
        assert not (run / "image" / "stage.json").exists()
        executed = json.loads((run / "03_image.ipynb").read_text())   # the executed notebook keeps what had run
        statuses = [c["metadata"]["papermill"]["status"] for c in executed["cells"] if c["cell_type"] == "code"]
        # the cell Ctrl-C landed in is marked failed where the kernel stopped inside it; on a loaded machine
        # the stop can land as the cell ends, so what is asserted is that what ran is kept
        assert statuses[0] == "completed" and "pending" not in statuses[:statuses.index("failed")] if "failed" in statuses \
            else statuses[0] == "completed", statuses
        assert any("epoch 1/8" in "".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))

        again = subprocess.run([sys.executable, "-c", RUN, str(root), "--params", str(params)], env=_env(tag),
                               capture_output=True, text=True, timeout=HANG_GUARD)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "[split] unchanged" in again.stdout
        stdout, _ = straight.communicate(timeout=HANG_GUARD)
        assert straight.returncode == 0, stdout
    finally:
        if straight.poll() is None:
            os.killpg(straight.pid, signal.SIGKILL)
            straight.wait()
    submission = (root / "runs" / "t" / "submission.csv").read_bytes()
    assert submission == (straight_root / "runs" / "t" / "submission.csv").read_bytes()
    assert not _temporaries(root / "runs")


TORCHRUN = """
run: t
data_dir: {data}
seed: 3407
stages: [split, image]
split: {{val_fraction: 0.3}}
image:
  launcher: torchrun
  tta: [center]
  cache_dir: {cache}
  models:
    - {{label: vit, name: test_vit, pretrained: false, img_size: 32,
        train: {{epochs: 8, batch_size: 8, progress: false}}}}
"""


@pytest.mark.slow
def test_ctrl_c_inside_a_torchrun_job_is_one_line_and_ends_torchrun_and_its_workers(tmp_path, tiny_data):
    root, params = _project(tmp_path, tiny_data, "torchrun", TORCHRUN)
    tag = uuid.uuid4().hex
    code, output, typed_at = _in_terminal(["-c", RUN, str(root), "--params", str(params)], _env(tag),
                                          type_ctrl_c_after="[image] epoch 1/8")
    assert typed_at > 0 and code == 130, output
    assert _only_run_lines(output) == [] and "Traceback" not in output, output
    assert re.fullmatch(r"mlc_utils run: stopped \(Ctrl-C\) in stage image, cell \d+(, training vit( \(epoch \d+ of 8\))?)?; "
                        r"the next run keeps split(, reuses image's saved members \(vit\))? and runs image",
                        _lines(output)[-1]), output   # saved already: the epoch lines can reach the terminal late
    assert _no_process_left(tag) == [], "torchrun or one of its workers outlived the run"


@pytest.mark.slow
def test_a_kernel_killed_by_sigkill_is_one_line_with_its_memory_and_the_rerun_is_clean(tmp_path, tiny_data):
    study = STUDY.replace("stages: [split, image, caption, fusion, ensemble]", "stages: [split, image]")
    root, params = _project(tmp_path, tiny_data, "killed", study)
    tag = uuid.uuid4().hex
    killed: list[int] = []

    def kill_the_kernel(line: str) -> None:
        if "[image] epoch 1/8" in line and not killed:
            for pid in _tagged(tag):
                if b"ipykernel_launcher" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)   # what the kernel's out-of-memory killer does
                    killed.append(pid)
    code, output, _ = _in_terminal(["-c", RUN, str(root), "--params", str(params)], _env(tag), on_line=kill_the_kernel)
    assert len(killed) == 1, output
    assert code == 1, output
    assert "Traceback" not in output and "Kernel died" not in output and _only_run_lines(output) == [], output
    said = [line for line in _lines(output) if line.startswith("mlc_utils run:")]
    assert said == [_lines(output)[-1]], output
    assert re.fullmatch(r"mlc_utils run: stage 'image' failed after \d+ s: its kernel was killed by SIGKILL in cell \d+"
                        r"(, training vit( \(epoch \d+ of 8\))?)?, at a peak of [\d.]+ (MiB|GiB) of memory; the out-of-memory killer "
                        r"ends a process so when memory runs out: try a smaller batch \(image.train.batch_size or "
                        r"inference.batch_size\)", said[0]), said[0]
    assert _no_process_left(tag) == [], "the killed kernel's DataLoader worker outlived it"
    run = root / "runs" / "t"
    assert not (run / "image" / "stage.json").exists()

    again = subprocess.run([sys.executable, "-c", RUN, str(root), "--params", str(params)], env=_env(tag),
                           capture_output=True, text=True, timeout=HANG_GUARD)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "[split] unchanged" in again.stdout and json.loads((run / "image" / "stage.json").read_text())["status"] == "ok"
    assert (run / "image" / "vit" / "member.json").is_file() and not _temporaries(run)


def test_ctrl_c_between_stages_names_what_finished_and_what_the_next_run_does(tmp_path, tiny_data, monkeypatch, capsys):
    """Ctrl-C after eda ran, before split started: the run's own KeyboardInterrupt, said in one line."""
    root, params = make_project(tmp_path, tiny_data)

    def execute_stage(study, stage, key, log, **kw):
        out = study.paths.notebook_out(stage)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("{}")
        pipeline.atomic_write_text(study.paths.stage_dir(stage) / "stage.json", json.dumps(
            {"stage": stage, "key": key, "status": "ok", "run_id": "r"}))
        return pipeline.StageResult(stage, "ran", 1.0, out)
    real_key = pipeline.stage_key

    def stage_key(study, stage, data_fp):
        if stage == "split" and not getattr(stage_key, "pressed", False):
            stage_key.pressed = True
            raise KeyboardInterrupt   # Ctrl-C while run works out whether split has changed
        return real_key(study, stage, data_fp)
    monkeypatch.setattr(pipeline, "execute_stage", execute_stage)
    monkeypatch.setattr(pipeline, "stage_key", stage_key)
    monkeypatch.setattr(pipeline, "run_study", functools.partial(pipeline.run_study, root=root))
    assert pipeline.cli(["--params", str(params)]) == 130
    err = capsys.readouterr().err
    assert err == "mlc_utils run: stopped (Ctrl-C) before stage split; the next run keeps eda and runs split\n"


def test_ctrl_c_goes_to_the_kernel_then_kills_it_then_is_pythons_own():
    """The first Ctrl-C interrupts the kernel (and starts no more cells), the second kills its process
    tree, a third is Python's KeyboardInterrupt; with no kernel the first is Python's."""
    calls = []

    class Kernel(KernelWatch):
        def interrupt(self):
            calls.append("interrupt")

        def kill(self):
            calls.append("kill")
    stop = StopOnInterrupt(grace=3600)
    with pytest.raises(KeyboardInterrupt):
        stop.handler(signal.SIGINT, None)
    stop = StopOnInterrupt(grace=3600)
    watch = Kernel()
    with stop.watching(watch):
        stop.handler(signal.SIGINT, None)
        assert calls == ["interrupt"] and watch.stopping
        with pytest.raises(StopRequested):
            watch.on_cell_start(cell=type("Cell", (), {"cell_type": "code", "source": "x = 1"})(), cell_index=5)
        stop.handler(signal.SIGINT, None)
        assert calls == ["interrupt", "kill"]
        with pytest.raises(KeyboardInterrupt):
            stop.handler(signal.SIGINT, None)
    assert stop.requested and stop.watch is None


def test_stopped_kernel_is_killed_after_the_grace_period():
    """A kernel that does not stop on SIGINT (a long C call) is killed once the grace period ends."""
    killed = []

    class Kernel(KernelWatch):
        def interrupt(self):
            pass

        def kill(self):
            killed.append(time.monotonic())
    stop = StopOnInterrupt(grace=0.05)
    watch = Kernel()
    with stop.watching(watch):
        pressed = time.monotonic()
        stop.handler(signal.SIGINT, None)
        stop._timer.join(timeout=HANG_GUARD)
    assert killed and killed[0] - pressed >= 0.05


def test_what_a_killed_parent_leaves_running_is_adopted_and_ended(tmp_path):
    """A kernel killed under torchrun leaves torchrun (a session of its own) running: with this process
    a child subreaper, the orphan is re-parented here, and end_orphans ends it."""
    from mlc_utils.core.processes import child_subreaper, children, end_orphans
    ready = tmp_path / "grandchild.pid"
    script = ("import os, subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
              f"open({str(ready)!r}, 'w').write(str(p.pid))\n"
              "os._exit(0)   # the parent dies; the grandchild runs on\n")
    before = children()
    with child_subreaper():
        parent = subprocess.Popen([sys.executable, "-c", script])
        assert parent.wait(timeout=HANG_GUARD) == 0
        grandchild = int(ready.read_text())
        assert os.getpid() == int(Path(f"/proc/{grandchild}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert end_orphans(before) == [grandchild]
    assert not Path(f"/proc/{grandchild}").exists()


def test_memory_of_a_process_is_read_from_proc():
    from mlc_utils.core.processes import memory_bytes, proportional_bytes
    rss, peak = memory_bytes(os.getpid())
    assert 0 < rss <= peak and 0 < proportional_bytes(os.getpid()) <= peak
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    assert memory_bytes(ended.pid) == (0, 0) and proportional_bytes(ended.pid) == 0


def test_a_run_whose_sigint_is_ignored_keeps_ignoring_it():
    """A job started in the background by a script ignores SIGINT: run does not take it over."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopOnInterrupt():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with StopOnInterrupt() as stop:
            assert signal.getsignal(signal.SIGINT) == stop.handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
