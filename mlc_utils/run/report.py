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

import yaml

from mlc_utils.core.io import atomic_write_text

TEMPLATE = Path(__file__).parent / "templates" / "offline.html.j2"


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


def _table_html(table: dict, digits: int = 4) -> str:
    columns = table.get("columns", [])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    rows = []
    for row in table.get("data", []):
        cells = []
        for value in row:
            text = f"{value:.{digits}f}" if isinstance(value, float) else str(value)
            cells.append(f"<td>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}.failed{color:#b00}.skipped{color:#666}.ran{color:#070}
figure{display:inline-block;margin:.5em}figure img{max-width:520px}code{background:#f5f5f5}
"""


def write_index(study, results) -> Path:
    """``reports/<run>/index.html`` from the stage summaries; written after every run, failed or not."""
    from mlc_utils.core.fingerprint import data_fingerprint
    from mlc_utils.study.context import load_summary
    params = study.params
    report_dir = study.paths.report_dir
    report_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>Study '{html.escape(params.run)}'</h1>",
             f"<p>Data: <code>{html.escape(str(params.data_path(study.root).resolve()))}</code> &middot; "
             f"written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>",
             "<h2>Stages</h2><table><thead><tr><th>stage</th><th>status</th><th>time (s)</th>"
             "<th>report</th><th>headline</th></tr></thead><tbody>"]
    study_tables, figures = [], []
    for result in results:
        stem = Path(study.paths.notebook_out(result.stage)).stem
        summary = load_summary(study.paths.stage_dir(result.stage))
        links = []
        if (report_dir / f"{stem}.html").is_file():
            links.append(f'<a href="{stem}.html">report</a>')
            links.append(f'<a href="{stem}.full.html">notebook</a>')
        executed = Path(study.paths.notebook_out(result.stage))
        if executed.is_file():  # the executed .ipynb itself, to open in JupyterLab
            links.append(f'<a href="{html.escape(os.path.relpath(executed, report_dir))}">.ipynb</a>')
        headline = "; ".join(f"{html.escape(k)}: {_fmt(v)}" for k, v in summary.get("headline", {}).items())
        if result.error:
            headline = f'<span class="failed">{html.escape(result.error)}</span>'
        manifest = study.paths.manifest(result.stage) or {}
        seconds = manifest.get("seconds", "") if result.status in ("skipped", "earlier run") \
            else (f"{result.seconds:.0f}" if result.seconds else "")
        parts.append(f"<tr><td>{result.stage}</td><td class='{result.status.split()[0]}'>{result.status}</td>"
                     f"<td>{seconds}</td><td>{' '.join(links)}</td><td>{headline}</td></tr>")
        for name, table in summary.get("tables", {}).items():
            if table.get("in_index"):
                study_tables.append((result.stage, name, table))
        for fig in summary.get("figures", [])[:3]:
            path = study.paths.stage_dir(result.stage) / fig
            if path.is_file():
                figures.append((result.stage, fig, base64.b64encode(path.read_bytes()).decode()))
    parts.append("</tbody></table>")
    if study_tables:
        parts.append("<h2>Results</h2>")
        for stage, name, table in sorted(study_tables, key=lambda item: item[1]):  # Table 1, 2, 3
            parts.append(f"<h3 id='{html.escape(name)}'>{html.escape(name)} <small>({stage})</small></h3>")
            parts.append(_table_html(table))
    if figures:
        parts.append("<h2>Figures</h2>")
        for stage, name, data in figures:
            parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{stage}: {html.escape(name)}</figcaption></figure>")
    parts.append("<h2>Provenance</h2>")
    parts.append(_table_html({"columns": ["package", "version"], "data": list(_versions().items())}))
    try:
        fingerprint = data_fingerprint(params.data_path(study.root))
    except OSError:
        fingerprint = {}
    parts.append(_table_html({"columns": ["data file", "sha256"], "data": list(fingerprint.items())}))
    from mlc_utils.study.params import params_as_dict
    parts.append("<h3>Parameters</h3><pre>" + html.escape(yaml.safe_dump(params_as_dict(params), sort_keys=False))
                 + "</pre>")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>mlc: {html.escape(params.run)}</title>" \
           f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    atomic_write_text(report_dir / "provenance.json", json.dumps(
        {"versions": _versions(), "data": fingerprint, "params": params_as_dict(params),
         "params_file": params.source}, indent=1))
    return atomic_write_text(report_dir / "index.html", page)
