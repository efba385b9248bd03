"""The package's shape holds: layers import downwards only, no cycles, and light commands stay light."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_import_contracts_are_kept():
    """pyproject.toml's import-linter contracts: the layers in data-flow order, no sibling cycles."""
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"{LINT_IMPORTS} is missing: install requirements-test.txt (import-linter)")
    done = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


MODULES_AFTER = """
import json, sys
from mlc_utils import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "timm": "timm" in sys.modules}), file=sys.stderr)
"""


@pytest.mark.parametrize("command", [["--help"], ["run", "--help"], ["validate", "--help"], ["validate", "--data", "DATA"]])
def test_light_commands_do_not_import_torch(command, tiny_data):
    """``--help`` and ``validate`` answer without torch (about 2 s and 740 MB on this machine)."""
    argv = [str(tiny_data) if a == "DATA" else a for a in command]
    done = subprocess.run([sys.executable, "-c", MODULES_AFTER, *argv], cwd=PROJECT, capture_output=True,
                          text=True, timeout=300)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["code"] in (0, None), done.stdout + done.stderr
    assert not report["torch"] and not report["timm"], f"{' '.join(argv)} imported torch"


def test_an_image_model_entry_is_read_and_checked_without_torch():
    """ImageModelSpec extends models.image_config.ImageModelConfig, whose checks need no torch."""
    code = ("import sys; from mlc_utils.core.config import from_dict; from mlc_utils.study.params import ImageModelSpec; "
            "spec = from_dict(ImageModelSpec, {'name': 'resnet18', 'head': 'class_attention', 'attention_grid': 2}); "
            "assert spec.attention_grid == 2 and spec.label == 'resnet18'; "
            "print('torch' in sys.modules, 'timm' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["False", "False"], done.stdout + done.stderr


def test_image_heads_are_the_configs_choices():
    from typing import get_args

    from mlc_utils.models.image import HEADS
    from mlc_utils.models.image_config import HeadName
    assert set(get_args(HeadName)) == set(HEADS)


def test_caption_poolings_are_the_configs_choices():
    from typing import get_args

    from mlc_utils.models.caption import POOLINGS
    from mlc_utils.models.caption_config import PoolingName
    assert set(get_args(PoolingName)) == set(POOLINGS)


def test_training_choices_are_the_registries_names():
    """TrainConfig's Literal choices (checked without torch) name exactly what the loop implements."""
    from mlc_utils.train import loop, losses, optim
    from mlc_utils.train.config import choices
    assert set(choices("optimizer")) == set(optim.OPTIMIZERS)
    assert set(choices("scheduler")) == set(optim.SCHEDULES) == set(optim.STEP_SCHEDULES)
    assert set(choices("schedule_unit")) == set(optim.SCHEDULE_UNITS)
    assert set(choices("amp_dtype")) == set(loop.AMP_DTYPES)
    assert set(choices("loss")) == set(losses.LOSSES)


def _notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_every_named_table_and_figure_is_recorded_by_its_stage():
    """The report and the findings read tables and figures through mlc_utils.study.artifacts; each
    one there must be recorded (``ctx.table`` / ``ctx.figure``) by its own stage's notebook, under
    that object and never under a typed string, so nothing the report reads can match nothing written."""
    import re

    from mlc_utils.run import report
    from mlc_utils.study import artifacts
    from mlc_utils.study.stages import STAGES
    produced, problems = set(), []
    for stage, info in STAGES.items():
        code = _notebook_code(PROJECT / "notebooks" / info.notebook)
        for kind, namespace in (("table", "TABLES"), ("figure", "FIGURES")):
            for call in re.findall(rf"ctx\.{kind}\((.*)", code):
                named = re.findall(rf"\b{namespace}\.(\w+)", call)
                if not named:
                    problems.append(f"{info.notebook}: ctx.{kind}({call} names no {namespace} entry")
                    continue
                obj = getattr(getattr(artifacts, namespace), named[0])
                if obj.stage != stage:
                    problems.append(f"{info.notebook}: records {obj} of stage {obj.stage!r}")
                produced.add(obj)
    wanted = {*artifacts.registered(artifacts.TABLES).values(), *artifacts.registered(artifacts.FIGURES).values()}
    problems += [f"{obj} is produced by no notebook" for obj in sorted(wanted - produced, key=str)]
    problems += [f"report.FIGURES: {figure} is not in artifacts.FIGURES" for _, figure, _ in report.FIGURES
                 if figure not in wanted]
    consumers = ("run/report.py", "study/findings.py", "study/paper.py", "study/errors.py", "study/settings.py")
    for module in consumers:  # consumers name results by the objects only
        source = (PROJECT / "mlc_utils" / module).read_text(encoding="utf-8")
        problems += [f"{module} types the name of {table}" for table in artifacts.registered(artifacts.TABLES).values()
                     if re.search(rf"""["']{re.escape(table.name)}["']""", source)]
    assert not problems, "\n".join(problems)


RUFF = Path(sys.executable).parent / "ruff"


def test_ruff_rules_hold():
    """pyproject.toml's [tool.ruff] rules over mlc_utils and tests: syntax errors, pyflakes, import order."""
    if not RUFF.is_file():
        pytest.skip(f"{RUFF} is missing: install requirements-test.txt (ruff) to lint")
    done = subprocess.run([str(RUFF), "check", "--no-cache", "."], cwd=PROJECT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
