"""HTML reports: each executed notebook rendered twice (a reader's report without code, and the
full notebook), and ``reports/<run>/index.html`` tying the stages together with their headline
figures, the study's tables and the provenance a result needs to be traced.
"""
from __future__ import annotations

import base64
import html
import json
import os
import platform
import time
from pathlib import Path

import markupsafe
import yaml

from mlc_utils.core.io import atomic_write_text

TEMPLATE = Path(__file__).parent / "templates" / "offline.html.j2"
INDEX_TEMPLATE = Path(__file__).parent / "templates" / "index.html.j2"


def render_notebook(notebook: Path, report_dir: Path) -> tuple[Path, Path]:
    """Write ``NAME.html`` (outputs only, reads as a report) and ``NAME.full.html`` (with code)."""
    import nbformat
    from nbconvert import HTMLExporter
    report_dir.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(str(notebook), as_version=4)
    outputs = []
    for exclude_input, suffix in ((True, ".html"), (False, ".full.html")):
        exporter = HTMLExporter(template_file=str(TEMPLATE), extra_template_basedirs=[str(TEMPLATE.parent)],
                                exclude_input=exclude_input, exclude_input_prompt=True, exclude_output_prompt=True)
        body, _ = exporter.from_notebook_node(nb)
        outputs.append(atomic_write_text(report_dir / f"{notebook.stem}{suffix}", body))
    return outputs[0], outputs[1]


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "timm", "transformers", "sklearn", "pandas", "numpy", "papermill"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "?")
        except ImportError:
            out[name] = "not installed"
    return out


def _frame_html(frame, digits: int = 4, escape: bool = True) -> str:
    """A table as HTML, numbers rounded for reading (``DataFrame.to_html``)."""
    return frame.to_html(index=False, border=0, escape=escape, na_rep="",
                         float_format=lambda value: f"{value:.{digits}f}")


def _summary_frame(table: dict):
    """A table a stage recorded (``StageContext.table``: pandas' split orientation) as a DataFrame."""
    import pandas as pd
    return pd.DataFrame(table.get("data", []), columns=table.get("columns", []))


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _stage_row(study, result, report_dir: Path) -> dict:
    """One row of the index's stage table: status, time, links to the reports and the headline."""
    from mlc_utils.study.context import load_summary
    executed = Path(study.paths.notebook_out(result.stage))
    links = []
    if (report_dir / f"{executed.stem}.html").is_file():
        links += [f'<a href="{executed.stem}.html">report</a>', f'<a href="{executed.stem}.full.html">notebook</a>']
    if executed.is_file():  # the executed .ipynb itself, to open in JupyterLab
        links.append(f'<a href="{html.escape(os.path.relpath(executed, report_dir))}">.ipynb</a>')
    summary = load_summary(study.paths.stage_dir(result.stage))
    headline = html.escape("; ".join(f"{k}: {_fmt(v)}" for k, v in summary.get("headline", {}).items()))
    if result.error:
        headline = f'<span class="failed">{html.escape(result.error)}</span>'
    manifest = study.paths.manifest(result.stage) or {}
    seconds = manifest.get("seconds", "") if result.status in ("skipped", "earlier run") \
        else (f"{result.seconds:.0f}" if result.seconds else "")
    return {"stage": result.stage, "status": f'<span class="{result.status.split()[0]}">{result.status}</span>',
            "time (s)": seconds, "report": " ".join(links), "headline": headline}


def write_index(study, results) -> Path:
    """``reports/<run>/index.html`` from the stage summaries; written after every run, failed or not."""
    import jinja2
    import pandas as pd

    from mlc_utils.core.fingerprint import data_fingerprint
    from mlc_utils.study.context import load_summary
    from mlc_utils.study.params import params_as_dict
    params = study.params
    report_dir = study.paths.report_dir
    report_dir.mkdir(parents=True, exist_ok=True)
    tables, figures = [], []
    for result in results:
        summary = load_summary(study.paths.stage_dir(result.stage))
        tables += [{"stage": result.stage, "name": name, "html": _frame_html(_summary_frame(table))}
                   for name, table in summary.get("tables", {}).items() if table.get("in_index")]
        for name in summary.get("figures", [])[:3]:
            path = study.paths.stage_dir(result.stage) / name
            if path.is_file():
                figures.append({"stage": result.stage, "name": name,
                                "data": base64.b64encode(path.read_bytes()).decode()})
    try:
        fingerprint = data_fingerprint(params.data_path(study.root))
    except OSError:
        fingerprint = {}
    stages = pd.DataFrame([_stage_row(study, result, report_dir) for result in results],
                          columns=["stage", "status", "time (s)", "report", "headline"])
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(INDEX_TEMPLATE.parent), autoescape=True)
    page = environment.get_template(INDEX_TEMPLATE.name).render(
        run=params.run, data_dir=str(params.data_path(study.root).resolve()),
        written=time.strftime("%Y-%m-%d %H:%M:%S"),
        stages_table=markupsafe.Markup(_frame_html(stages, escape=False)),
        tables=[{**t, "html": markupsafe.Markup(t["html"])} for t in sorted(tables, key=lambda t: t["name"])],
        figures=figures,
        versions_table=markupsafe.Markup(_frame_html(pd.DataFrame(list(_versions().items()),
                                                                  columns=["package", "version"]))),
        data_table=markupsafe.Markup(_frame_html(pd.DataFrame(list(fingerprint.items()),
                                                              columns=["data file", "sha256"]))),
        params_yaml=yaml.safe_dump(params_as_dict(params), sort_keys=False))
    atomic_write_text(report_dir / "provenance.json", json.dumps(
        {"versions": _versions(), "data": fingerprint, "params": params_as_dict(params),
         "params_file": params.source}, indent=1))
    return atomic_write_text(report_dir / "index.html", page)
