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
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import markupsafe
import yaml

from mlc_utils.core.io import atomic_write_text
from mlc_utils.study.artifacts import FIGURES as F
from mlc_utils.study.artifacts import TABLES as T

TEMPLATE = Path(__file__).parent / "templates" / "offline.html.j2"
INDEX_TEMPLATE = Path(__file__).parent / "templates" / "index.html.j2"
RUNS_TEMPLATE = Path(__file__).parent / "templates" / "runs.html.j2"


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


def _stage_row(study, result, report_dir: Path) -> dict:
    """One row of the index's stage table: status, time, links to the reports and the headline."""
    from mlc_utils.study.context import load_summary
    from mlc_utils.study.findings import fmt_seconds, format_headline
    executed = Path(study.paths.notebook_out(result.stage))
    links = []
    if (report_dir / f"{executed.stem}.html").is_file():
        links += [f'<a href="{executed.stem}.html">report</a>', f'<a href="{executed.stem}.full.html">notebook</a>']
    if executed.is_file():  # the executed .ipynb itself, to open in JupyterLab
        links.append(f'<a href="{html.escape(os.path.relpath(executed, report_dir))}">.ipynb</a>')
    summary = load_summary(study.paths.stage_dir(result.stage))
    headline = html.escape(format_headline(summary.get("headline", {})))
    if result.error:
        headline = f'<span class="failed">{html.escape(result.error)}</span>'
    manifest = study.paths.manifest(result.stage) or {}
    seconds = manifest.get("seconds") if result.status in ("skipped", "earlier run") else result.seconds
    return {"stage": result.stage, "status": f'<span class="{result.status.split()[0]}">{result.status}</span>',
            "time": fmt_seconds(seconds) if seconds else "", "report": " ".join(links), "headline": headline}


#: the figures the report shows, in its order: (section, figure, caption)
FIGURES = [
    ("data", F.label_frequency, "Label frequency in the labelled images (the paper's Figure 6)."),
    ("data", F.labels_per_image, "How many labels an image carries."),
    ("data", F.cooccurrence, "Label co-occurrence: the share of images with label i that also carry label j."),
    ("data", F.caption_lengths, "Caption length in words, labelled and test rows."),
    ("data", F.eda_examples, "Example images with their captions and labels."),
    ("split", F.split_frequencies, "Label shares in the training and validation folds, against a random split."),
    ("method", F.image_curves, "Image models: training loss and validation sample-F1 by epoch."),
    ("method", F.caption_curves, "Caption model: training loss and validation sample-F1 by epoch."),
    ("results", F.late_fusion_weight, "Late fusion: validation sample-F1 by the weight on the image model "
                                      "(chosen on validation: in-sample)."),
    ("results", F.ablation, "Ablation: change in sample-F1 at 0.5 when one switch is flipped."),
    ("per_class", F.image_per_class, "Image models: validation F1 per class at threshold 0.5."),
    ("errors", F.error_examples, "Validation images the submitted model got wrong (a label missed or added), with "
                                 "caption, truth and prediction."),
]
#: the recorded tables the index page shows as they are: (template key, table)
EXTRA_TABLES = [("per_class", T.best_per_class), ("missed", T.missed_labels), ("examples", T.error_examples),
                ("ensemble", T.ensemble_members)]


def _figures(study, chosen) -> dict:
    """Each section's figures, numbered in reading order, embedded as PNG data URIs."""
    sections: dict = {}
    number = 0
    for section, figure, caption in FIGURES:
        path = study.paths.stage_dir(figure.stage) / figure.file_name
        if figure.stage not in chosen or not path.is_file():
            continue
        number += 1
        sections.setdefault(section, []).append(
            {"number": number, "stage": figure.stage, "name": path.name, "caption": caption,
             "data": base64.b64encode(path.read_bytes()).decode()})
    return sections


def _markup(frame, digits: int = 4, escape: bool = True):
    return markupsafe.Markup(_frame_html(frame, digits, escape))


def write_index(study, results) -> Path:
    """``reports/<run>/index.html``, the study as a report, from the stage summaries; written after
    every run, failed or not. ``reports/index.html`` (every run) is rewritten with it."""
    import jinja2
    import pandas as pd

    from mlc_utils.core.fingerprint import data_fingerprint
    from mlc_utils.study import paper
    from mlc_utils.study.artifacts import recorded_table
    from mlc_utils.study.context import load_summary
    from mlc_utils.study.errors import error_summary
    from mlc_utils.study.findings import conclusion, findings
    from mlc_utils.study.params import params_as_dict
    from mlc_utils.study.settings import method_frame, method_note
    params = study.params
    report_dir = study.paths.report_dir
    report_dir.mkdir(parents=True, exist_ok=True)
    shown = [r.stage for r in results if r.status in ("ran", "skipped", "earlier run")]
    summaries = {stage: load_summary(study.paths.stage_dir(stage)) for stage in shown}
    try:
        fingerprint = data_fingerprint(params.data_path(study.root))
    except OSError:
        fingerprint = {}
    stages = pd.DataFrame([_stage_row(study, result, report_dir) for result in results],
                          columns=["stage", "status", "time", "report", "headline"])
    tables = {key: _markup(build(recorded_table(summaries, table)))
              for key, table, build in (("table1", T.table1, paper.table1_with_paper),
                                        ("table2", T.table2, paper.table2_with_paper),
                                        ("table3", T.table3, paper.table3_with_paper))}
    extra = {}
    for key, table in EXTRA_TABLES:
        frame = recorded_table(summaries, table)
        if frame is not None and not frame.empty:
            extra[key] = _markup(frame.head(8) if key == "missed" else frame)
    written = time.strftime("%Y-%m-%d %H:%M:%S")
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(INDEX_TEMPLATE.parent), autoescape=True)
    page = environment.get_template(INDEX_TEMPLATE.name).render(
        run=params.run, data_dir=str(params.data_path(study.root).resolve()), params_file=params.source or "defaults",
        written=written, findings=findings(summaries), conclusion=conclusion(summaries),
        eda=summaries.get("eda", {}).get("headline", {}), split=summaries.get("split", {}).get("headline", {}),
        method_table=_markup(method_frame(params)), method_note=method_note(params),
        error_summary=error_summary(recorded_table(summaries, T.missed_labels)),
        tables=tables, extra=extra, figures=_figures(study, shown),
        stages_table=_markup(stages, escape=False), citation=paper.CITATION,
        best_model=summaries.get("ensemble", {}).get("headline", {}).get("per_class_model", ""),
        versions_table=_markup(pd.DataFrame(list(_versions().items()), columns=["package", "version"])),
        data_table=_markup(pd.DataFrame(list(fingerprint.items()), columns=["data file", "sha256"])),
        params_yaml=yaml.safe_dump(params_as_dict(params), sort_keys=False))
    headline = {}
    for stage in ("image", "caption", "fusion", "ensemble"):
        for key, value in summaries.get(stage, {}).get("headline", {}).items():
            if isinstance(value, float) and "seconds" not in key:
                headline[f"{stage} {key}"] = value
    atomic_write_text(report_dir / "provenance.json", json.dumps(
        {"run": params.run, "written": written, "data_dir": str(params.data_path(study.root).resolve()),
         "versions": _versions(), "data": fingerprint, "params": params_as_dict(params),
         "params_file": params.source, "headline": headline,
         "stages": {r.stage: r.status for r in results}}, indent=1))
    index = atomic_write_text(report_dir / "index.html", page)
    write_runs_index(report_dir.parent)
    return index


def write_runs_index(reports: Path) -> Path:
    """``reports/index.html``: every run with its date, data, params file and headline scores."""
    import jinja2
    import pandas as pd

    from mlc_utils.study.findings import fmt_value
    rows = []
    for path in sorted(reports.glob("*/provenance.json")):
        try:
            prov = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        link = f'<a href="{html.escape(path.parent.name)}/index.html">{html.escape(path.parent.name)}</a>'
        scores = "; ".join(f"{k}: {fmt_value(k, v)}" for k, v in (prov.get("headline") or {}).items())
        rows.append({"run": link, "written": prov.get("written", ""), "data": html.escape(prov.get("data_dir", "")),
                     "params file": html.escape(str(prov.get("params_file") or "")),
                     "headline scores": html.escape(scores)})
    frame = pd.DataFrame(rows, columns=["run", "written", "data", "params file", "headline scores"])
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(INDEX_TEMPLATE.parent), autoescape=True)
    page = environment.get_template(RUNS_TEMPLATE.name).render(runs_table=_markup(frame, escape=False),
                                                              written=time.strftime("%Y-%m-%d %H:%M:%S"))
    return atomic_write_text(reports / "index.html", page)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def write_pdf(index: Path, log=print, timeout: float = 180) -> Path | None:
    """``index.pdf`` beside ``index.html``, printed by headless Chromium; None (and a message) without it."""
    chromium = find_chromium()
    pdf = index.with_suffix(".pdf")
    if chromium is None:
        log(f"report: no PDF ({pdf.name}): chromium is not installed (`make browser` installs it)")
        return None
    with tempfile.TemporaryDirectory(prefix="mlc-chromium-") as profile:
        tmp = pdf.with_name(f".{pdf.name}.tmp")
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--no-pdf-header-footer",
                   f"--print-to-pdf={tmp}", index.resolve().as_uri()]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as err:
            log(f"report: no PDF: chromium failed ({type(err).__name__}: {err})")
            return None
        if not tmp.is_file() or tmp.stat().st_size == 0:
            log(f"report: no PDF: chromium exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
            return None
        os.replace(tmp, pdf)
    return pdf


def pdf_pages(path: Path) -> int:
    """The number of pages of a PDF (its page objects), without a PDF library."""
    import re
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", Path(path).read_bytes()))
