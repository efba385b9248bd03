"""Reliability, for a reader: the run's report renders, is complete, links nowhere broken, and
records what produced it; the notebooks run top to bottom as a JupyterLab user runs them. (The
report in a real browser: tests/test_browser.py.)

One chain (eda + split on tiny data, in a temporary project) is run once for the module; the tests
read what it wrote: ``reports/t/index.html`` with the stdlib HTML parser (stage table, figures as
PNG data URIs, relative links, in-page anchors), and ``reports/t/provenance.json`` against the
installed versions, the data's checksums and the params.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest
from conftest import PROJECT, make_tiny_folder

from mlc_utils.run.pipeline import run_study
from mlc_utils.run.report import FIGURES, find_chromium, pdf_pages
from mlc_utils.study import paper
from mlc_utils.study.params import load_params, params_as_dict

pytestmark = pytest.mark.slow
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _copy_notebooks(root: Path) -> None:
    shutil.copytree(PROJECT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("report")
    data = make_tiny_folder(base / "tiny")
    root = base / "project"
    _copy_notebooks(root)
    (root / "params").mkdir()
    params = root / "params" / "t.yaml"
    params.write_text(f"run: t\ndata_dir: {data}\nstages: [eda, split]\nseed: 11\n"
                      "eda: {n_examples: 2, image_size_sample: 10}\n")
    results = run_study(str(params), root=root, log=lambda *_: None)
    assert [r.status for r in results] == ["ran", "ran"], [r.error for r in results]
    return {"root": root, "data": data, "params": params, "report": root / "reports" / "t"}


class Page(HTMLParser):
    """Tables (header + rows of cell text), images, links, ids and <pre> text of one HTML page."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tables: list[dict] = []
        self.images: list[dict] = []
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.pre: list[str] = []
        self.captions: list[str] = []
        self._cell = self._row = self._pre = self._caption = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "table":
            self.tables.append({"header": [], "rows": []})
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        elif tag == "pre":
            self._pre = []
        elif tag == "figcaption":
            self._caption = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(("th" if tag == "th" else "td", "".join(self._cell).strip()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self.tables:
            if all(kind == "th" for kind, _ in self._row):
                self.tables[-1]["header"] = [text for _, text in self._row]
            else:
                self.tables[-1]["rows"].append([text for _, text in self._row])
            self._row = None
        elif tag == "pre" and self._pre is not None:
            self.pre.append("".join(self._pre))
            self._pre = None
        elif tag == "figcaption" and self._caption is not None:
            self.captions.append("".join(self._caption).strip())
            self._caption = None

    def handle_data(self, data):
        for part in (self._cell, self._pre, self._caption):
            if part is not None:
                part.append(data)

    def table(self, *header: str) -> dict:
        found = [t for t in self.tables if t["header"][: len(header)] == list(header)]
        assert found, f"no table with header {header}; tables: {[t['header'] for t in self.tables]}"
        return found[0]


def _broken_links(page: Page, html_path: Path) -> list[str]:
    broken = []
    for href in page.links:
        url = urlparse(href)
        if url.scheme in ("http", "https", "mailto", "data"):
            continue
        if not url.path:  # '#anchor' within the page
            if url.fragment and unquote(url.fragment) not in page.ids:
                broken.append(href)
            continue
        if not (html_path.parent / unquote(url.path)).is_file():
            broken.append(href)
    return broken


def test_index_has_every_table_and_figure_and_no_broken_link(study):
    from PIL import Image
    report, run = study["report"], study["root"] / "runs" / "t"
    index = report / "index.html"
    page = Page(index.read_text(encoding="utf-8"))

    stages = page.table("stage", "status", "time", "report", "headline")
    assert [row[:2] for row in stages["rows"]] == [["eda", "ran"], ["split", "ran"]]
    assert all(re.fullmatch(r"\d+ s|\d+ min", row[2]) for row in stages["rows"])  # times for reading
    assert "train rows: 40" in stages["rows"][0][4] and "method: iterative" in stages["rows"][1][4]
    assert page.table("package", "version")["rows"] and page.table("data file", "sha256")["rows"]

    # figures: those of the report's list that the stages drew, numbered in reading order, as PNG data URIs
    expected = [(figure.stage, figure.file_name, caption) for _, figure, caption in FIGURES
                if figure.stage in ("eda", "split") and (run / figure.stage / figure.file_name).is_file()]
    assert len(expected) == 6
    assert [img.get("alt") for img in page.images] == [name for _, name, _ in expected]
    assert page.captions == [f"Figure {i}: {caption} ({stage})" for i, (stage, _, caption) in enumerate(expected, 1)]
    for img, (stage, name, _) in zip(page.images, expected):
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix), img.get("alt")
        raw = base64.b64decode(img["src"][len(prefix):], validate=True)
        assert raw.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(raw)) as figure:
            figure.verify()
        assert raw == (run / stage / name).read_bytes()

    # links: every stage has its report and its notebook, and every relative link resolves
    assert sorted(page.links) == ["../../runs/t/01_eda.ipynb", "../../runs/t/02_split.ipynb", "01_eda.full.html",
                                  "01_eda.html", "02_split.full.html", "02_split.html"]
    assert _broken_links(page, index) == []
    for name in page.links:
        sub = Page((report / name).read_text(encoding="utf-8"))
        assert _broken_links(sub, report / name) == [], name
        assert all(img["src"].startswith("data:image/png;base64,") for img in sub.images if "src" in img), name


def test_report_reads_as_the_study_with_the_papers_tables(study):
    """The sections of the course report, Tables 1-3 with the paper's numbers, findings from the numbers."""
    text = (study["report"] / "index.html").read_text(encoding="utf-8")
    page = Page(text)
    for section in ("summary", "data", "split", "method", "results", "table-1", "table-2", "table-3", "per-class",
                    "errors", "conclusion", "stages", "provenance", "references"):
        assert section in page.ids, section
    assert "<h1>Multi-label classification of images and captions</h1>" in text
    assert "run <b>t</b>" in text and str(study["data"]) in text and str(study["params"]) in text
    assert paper.CITATION in text.replace("&#39;", "'")

    table1 = page.table("input", "source", "model", "F1@0.40", "F1@0.50", "F1@0.60")
    paper1 = {row[2]: row[3:6] for row in table1["rows"] if row[1] == paper.PAPER}
    assert paper1["CNN-EfficientNet"] == ["", "0.8362", ""]
    assert paper1["DeiT-S"] == ["0.8602", "0.8606", "0.8453"]
    assert paper1["Swin-L"] == ["0.8973", "0.9007", "0.8960"]
    assert paper1["Swin-V2-L"] == ["0.9071", "0.9079", "0.9058"]
    assert paper1["BERT"] == ["0.8708", "0.8679", "0.8637"]
    assert paper1["Swin-L + BERT (Bilinear)"] == ["0.9003", "0.8997", "0.8975"]
    assert paper1["Swin-L + BERT (Concatenate)"] == ["0.8991", "0.8999", "0.8965"]
    assert paper1["Swin-V2-L + BERT (Bilinear)"] == ["0.9017", "0.9017", "0.8994"]
    assert paper1["Swin-V2-L + BERT (Concatenate)"] == ["0.9006", "0.9027", "0.9009"]
    assert "F1 at tuned threshold (in-sample)" in table1["header"]
    table2 = page.table("input", "source", "best model", "F1@0.50 (out-of-sample)", "F1 at tuned threshold (in-sample)")
    assert {row[0]: row[2:] for row in table2["rows"] if row[1] == paper.PAPER} == {
        "image": ["Swin-V2-L", "", "0.9079"], "caption": ["BERT", "", "0.8708"],
        "image+caption": ["Swin-V2-L + BERT (Concatenate)", "", "0.9027"]}
    table3 = page.table("source", "variant", "switch", "setting")
    assert [row[5] for row in table3["rows"] if row[0] == paper.PAPER] == ["0.9079", "0.8856"]

    # the summary's sentences carry this run's numbers (eda and split ran here)
    split = json.loads((study["root"] / "runs" / "t" / "split" / "summary.json").read_text())["headline"]
    assert f"The iterative split keeps {split['val']} images for validation and trains on {split['train']}." \
        in " ".join(text.split())

    # every run of the project, linked from reports/index.html
    runs = Page((study["report"].parent / "index.html").read_text(encoding="utf-8"))
    listed = runs.table("run", "written", "data", "params file", "headline scores")
    assert [row[0] for row in listed["rows"]] == ["t"] and listed["rows"][0][3] == str(study["params"])
    assert runs.links == ["t/index.html"] and _broken_links(runs, study["report"].parent / "index.html") == []


def test_report_is_printed_to_pdf(study):
    pdf = study["report"] / "index.pdf"
    if find_chromium() is None:
        assert not pdf.exists()
        pytest.skip("chromium is not installed: the run printed no PDF (and said so)")
    assert pdf.read_bytes().startswith(b"%PDF") and pdf_pages(pdf) >= 1


def test_provenance_records_versions_data_and_params(study):
    import timm
    import torch
    import transformers
    report = study["report"]
    prov = json.loads((report / "provenance.json").read_text())
    assert prov["versions"]["torch"] == torch.__version__
    assert prov["versions"]["timm"] == timm.__version__
    assert prov["versions"]["transformers"] == transformers.__version__
    for name in ("train.csv", "test.csv"):
        assert prov["data"][name] == hashlib.sha256((study["data"] / name).read_bytes()).hexdigest(), name
    assert prov["data"]["images"] and len(prov["data"]["images"]) == 64
    assert prov["params"] == params_as_dict(load_params(study["params"]))
    assert prov["params"]["seed"] == 11 and prov["params_file"] == str(study["params"])

    page = Page((report / "index.html").read_text(encoding="utf-8"))
    versions = dict(page.table("package", "version")["rows"])
    assert versions["torch"] == torch.__version__ and versions["timm"] == timm.__version__
    assert versions["transformers"] == transformers.__version__
    data = dict(page.table("data file", "sha256")["rows"])
    assert data["train.csv"] == prov["data"]["train.csv"]
    assert any("seed: 11" in text and "data_dir:" in text for text in page.pre)


def test_notebooks_run_top_to_bottom_without_papermill(tmp_path, monkeypatch):
    """01_eda and 02_split executed as in JupyterLab (kernel 'mlc', cwd notebooks/, no parameters injected)."""
    from nbclient import NotebookClient
    data = make_tiny_folder(tmp_path / "tiny", n_train=30, n_test=6)
    root = tmp_path / "project"
    _copy_notebooks(root)
    (root / "params").mkdir()
    # what the notebooks' default params_file ("../params/demo.yaml") finds in this project ...
    (root / "params" / "demo.yaml").write_text(f"run: nb-default\ndata_dir: {data}\nstages: [eda, split]\n"
                                               "eda: {n_examples: 2, image_size_sample: 10}\n")
    # ... and what MLC_PARAMS names, which the parameters cell should prefer
    chosen = tmp_path / "tiny.yaml"
    chosen.write_text(f"run: nb-env\ndata_dir: {data}\nstages: [eda, split]\n"
                      "eda: {n_examples: 2, image_size_sample: 10}\n")
    monkeypatch.setenv("MLC_PARAMS", str(chosen))  # the kernel inherits this process's environment
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for name in ("01_eda.ipynb", "02_split.ipynb"):
        nb = nbformat.read(root / "notebooks" / name, as_version=4)
        NotebookClient(nb, kernel_name="mlc", timeout=600, allow_errors=False,
                       resources={"metadata": {"path": str(root / "notebooks")}}).execute()
        errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, (name, errors)
    run = "nb-env"  # the parameters cell prefers MLC_PARAMS over its default file
    assert not (root / "runs" / "nb-default").exists()
    split = root / "runs" / run / "split" / "split.csv"
    assert (root / "runs" / run / "eda" / "summary.json").is_file()
    assert split.is_file() and split.read_text().count("\n") == 31
    assert not (PROJECT / "runs" / run).exists(), "the notebooks wrote outside their project"
