"""The explorer and the reports in a real browser: Debian's Chromium (``make browser``) driven by
Playwright (requirements-test.txt; no browser download), on the session's finished tiny study.

- ``08_explore`` in JupyterLab (127.0.0.1, a token, the project's lab settings): run all cells, the
  widgets render, another class shows another case with its image, no error output, no news prompt.
- ``reports/<run>/*.html`` and the runs index: every image loads, every local link resolves, no
  table is wider than a 1280 px page.

Both skip, saying why, where Playwright or Chromium is missing. Every wait is on what the page
shows (Playwright's auto-waiting, ``wait_for_function``), never a fixed sleep.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from conftest import PROJECT

from mlc_utils.run.report import find_chromium
from mlc_utils.study.context import StageContext
from mlc_utils.study.explore import KINDS, load_explorer
from mlc_utils.study.params import load_params

pytestmark = pytest.mark.slow

# Debian's Chromium, as root, on a closed network: no sandbox, no GPU, and none of its calls home
# (Playwright gives every launch a fresh profile).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
PAGE_WIDTH = 1280
LAB_SETTINGS = PROJECT / "jupyter" / "lab-overrides.json"   # what `make setup` installs as ...
INSTALLED_LAB_SETTINGS = Path(sys.prefix, "share", "jupyter", "lab", "settings", "overrides.d", "mlc.json")
NEWS_PROMPT = "official Jupyter news"                      # JupyterLab's "Would you like to ... news?" toast
WAIT_MS = 300_000                                          # the most any one wait may take on a busy machine


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (requirements-test.txt; `make setup` installs it)")
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (looked for chromium, chromium-browser, google-chrome; "
                    "`make browser` installs Debian's package)")
    from playwright.sync_api import expect
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A page 1280 px wide that reaches only this machine: any other request is refused and listed
    in ``page.outside``; uncaught script errors are listed in ``page.script_errors``."""
    context = browser.new_context(viewport={"width": PAGE_WIDTH, "height": 900})
    context.set_default_timeout(WAIT_MS)
    outside: list[str] = []

    def local_only(route):
        url = route.request.url
        if urlparse(url).scheme in ("file", "data", "blob") or urlparse(url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(url)
            route.abort()
    context.route("**/*", local_only)
    page = context.new_page()
    page.outside, page.script_errors = outside, []
    page.on("pageerror", lambda error: page.script_errors.append(str(error)))
    yield page
    context.close()


def _all_ran(study: dict) -> None:
    assert [r.status for r in study["results"]] == ["ran"] * 8, \
        "\n".join(study["logs"] + [r.error for r in study["results"]])


# --- 08_explore in JupyterLab ------------------------------------------------------------------

def _copy_project(study: dict, to: Path) -> tuple[Path, Path]:
    """The finished study's notebooks, params and run outputs (checkpoints left out: the explorer
    reads the saved predictions), so JupyterLab writes nothing into the session's study or the repo."""
    root = to / "project"
    shutil.copytree(study["root"] / "notebooks", root / "notebooks")
    shutil.copytree(study["run"], root / "runs" / study["run"].name, ignore=shutil.ignore_patterns("*.pt"))
    params = root / study["params"].name
    shutil.copy(study["params"], params)
    return root, params


@pytest.fixture
def lab(finished_study, tmp_path):
    """JupyterLab on 127.0.0.1 (a free port, a token) over a copy of the finished study, with
    ``MLC_PARAMS`` naming its params file and none of this machine's user settings; stopped through
    its REST API so that its kernels go with it."""
    from jupyter_client.kernelspec import find_kernel_specs
    assert "mlc" in find_kernel_specs(), "no Jupyter kernel 'mlc': `make setup` registers it"
    _all_ran(finished_study)
    root, params = _copy_project(finished_study, tmp_path)
    token = os.urandom(16).hex()
    home = tmp_path / "jupyter"   # no settings, workspaces or runtime files of this machine's user
    env = dict(os.environ, MLC_PARAMS=str(params), JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTER_DATA_DIR=str(home / "data"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "user-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"))
    env.pop("MLC_WIDGETS", None)   # as `make lab` has it: widgets on (`run`, in this process, turns them off)
    log = tmp_path / "lab.log"
    # the language-server and terminal extensions are left off: the notebook needs neither, and
    # the first scans for language servers for seconds
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", "--ServerApp.port=0",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               "--ServerApp.jpserver_extensions={'jupyter_lsp': False, 'jupyter_server_terminals': False}"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    with open(log, "w") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = None
    try:
        url = _server_url(server, home / "runtime", token, log)
        yield {"url": url, "token": token, "root": root, "params": params, "log": log}
    finally:
        _stop_server(server, url, token)


def _server_url(server: subprocess.Popen, runtime: Path, token: str, log: Path) -> str:
    """The server's address from the file it writes once it listens, once /api/status answers."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        assert server.poll() is None, f"jupyter lab exited {server.returncode}:\n{log.read_text()[-3000:]}"
        info = sorted(runtime.glob("jpserver-*.json"))
        if info:
            url = json.loads(info[0].read_text())["url"].rstrip("/")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as answer:
                    if answer.status == 200:
                        return url
            except OSError:
                pass
        time.sleep(0.1)   # a poll interval, not a wait for something to have happened
    raise AssertionError(f"jupyter lab did not answer in {WAIT_MS / 1000:.0f} s:\n{log.read_text()[-3000:]}")


def _stop_server(server: subprocess.Popen, url: str | None, token: str) -> None:
    """/api/shutdown returns once the server has shut its kernels down; then the server is ended
    (it would take seconds more to exit by itself). A process it leaves behind fails the test."""
    import psutil
    children = psutil.Process(server.pid).children(recursive=True) if server.poll() is None else []
    if url is not None and server.poll() is None:
        request = urllib.request.Request(f"{url}/api/shutdown?token={token}", method="POST")
        try:
            urllib.request.urlopen(request, timeout=60).close()
        except OSError:
            pass
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    _, alive = psutil.wait_procs(children, timeout=30)
    for process in alive:
        process.kill()
    assert not alive, f"JupyterLab left {[p.pid for p in alive]} running"


def _shown(explorer, model: str, c: int, kind: str) -> tuple[str, str | None]:
    """What the notebook's browse widget first shows for ``model``, class ``c`` and ``kind`` at 0.5:
    its first line, and the image id of its first case (None when there is no case)."""
    cases = explorer.cases(model, c, kind)
    if cases.empty:
        return f"{model} makes no {kind} on class {explorer.class_label(c)} at 0.50", None
    return f"{kind} 1 of {len(cases)} — {cases.ImageID.iloc[0]}", cases.ImageID.iloc[0]


def _expected_views(root: Path, params: Path) -> dict:
    """For the last model (the ensemble): what the browse widget shows at first (the most frequent
    class, false negatives), and a later class (and kind) that shows a case of another image."""
    explorer = load_explorer(StageContext("explore", load_params(str(params)), root))
    model, classes = list(explorer.members)[-1], explorer.class_options()
    first, first_id = _shown(explorer, model, classes[0][1], KINDS[0])
    for option, c in classes[1:]:
        for kind in KINDS:
            then, then_id = _shown(explorer, model, c, kind)
            if then_id not in (None, first_id):
                return {"first": first, "has_image": first_id is not None, "class": option, "kind": kind, "then": then}
    raise AssertionError(f"no class but the first shows a case of another image for {model}")


def test_explorer_runs_and_browses_in_jupyterlab(page, lab):   # page first: no browser, no JupyterLab started
    from playwright.sync_api import expect
    assert INSTALLED_LAB_SETTINGS.is_file() and \
        json.loads(INSTALLED_LAB_SETTINGS.read_text()) == json.loads(LAB_SETTINGS.read_text()), \
        f"{INSTALLED_LAB_SETTINGS} is not the project's {LAB_SETTINGS.name}: `make setup` installs it"
    views = _expected_views(lab["root"], lab["params"])
    notebook = PROJECT / "notebooks" / "08_explore.ipynb"
    n_cells = len(json.loads(notebook.read_text())["cells"])

    page.goto(f"{lab['url']}/lab/tree/notebooks/{notebook.name}?token={lab['token']}")
    expect(page.locator(".jp-Notebook .jp-Cell")).to_have_count(n_cells)
    expect(page.get_by_text("Python (mlc) | Idle")).to_be_visible()   # the kernel is up
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    # done when every code cell shows an execution count ("[*]" while it runs, "[ ]" before)
    page.wait_for_function("""() => {
        const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')];
        return prompts.length > 0 && prompts.every(p => /^\\[\\d+\\]/.test(p.textContent.trim()));
    }""")
    expect(page.get_by_text("Python (mlc) | Idle")).to_be_visible()

    # the widgets render: the browser (model, class, kind of mistake, case, threshold), the image lookup
    browse, lookup = page.locator(".widget-interact").nth(0), page.locator(".widget-interact").nth(1)
    expect(page.locator(".widget-interact")).to_have_count(2)
    expect(browse.locator(".widget-label")).to_have_text(["model", "class", "mistakes", "case", "threshold"])
    expect(browse.locator(".widget-toggle-button")).to_have_text(list(KINDS))
    expect(lookup.locator(".widget-label")).to_have_text(["image id", "model"])
    shown = browse.locator(".widget-output")
    expect(shown).to_contain_text(views["first"])
    old_image = _drawn_image(shown) if views["has_image"] else ""

    # another class: another case, and its image draws
    if views["kind"] != KINDS[0]:
        browse.locator(".widget-toggle-button", has_text=views["kind"]).click()
    browse.get_by_label("class", exact=True).select_option(value=views["class"])
    expect(shown).to_contain_text(views["then"])
    assert _drawn_image(shown, not_src=old_image) != old_image

    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert errors.count() == 0, errors.all_inner_texts()
    assert page.get_by_text("Error displaying widget").count() == 0
    assert page.get_by_text(NEWS_PROMPT).count() == 0, "JupyterLab's news prompt shows over the notebook"
    assert page.outside == [], f"JupyterLab reached outside this machine: {page.outside}"
    assert page.script_errors == []


def _drawn_image(output, not_src: str = "") -> str:
    """The ``src`` of the image in ``output`` (not ``not_src``) once it has decoded with a width."""
    from playwright.sync_api import expect
    image = output.locator("img")
    expect(image).to_have_count(1)
    if not_src:
        expect(image).not_to_have_attribute("src", not_src)
    width = image.evaluate("img => img.decode().then(() => img.naturalWidth, () => 0)")
    assert width > 0, "the case's image does not draw"
    return image.get_attribute("src")


# --- the report and the runs index -------------------------------------------------------------

PAGE_FACTS = """() => ({
    width: document.documentElement.clientWidth,
    scrollWidth: document.documentElement.scrollWidth,
    images: [...document.images].map(img => ({alt: img.alt, loaded: img.complete && img.naturalWidth > 0})),
    links: [...document.links].map(a => ({href: a.getAttribute('href'), url: a.href})),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id),
    tables: [...document.querySelectorAll('table')].map(t => Math.ceil(t.getBoundingClientRect().right)),
})"""


def test_report_and_runs_index_in_chromium(page, finished_study):
    _all_ran(finished_study)
    reports = finished_study["report"].parent
    pages = sorted(finished_study["report"].glob("*.html")) + [reports / "index.html"]
    assert len(pages) >= 1 + 2 * 8, [p.name for p in pages]   # index, each stage's two pages, the runs index
    problems, counts = [], {"images": 0, "links": 0, "tables": 0}
    for html in pages:
        page.goto(html.as_uri())   # returns after the load event: every image has loaded or failed
        facts = page.evaluate(PAGE_FACTS)
        name = html.relative_to(reports)
        problems += [f"{name}: image {img['alt']!r} did not load" for img in facts["images"] if not img["loaded"]]
        for link in facts["links"]:
            problem = _unresolved(link, html, set(facts["ids"]))
            if problem:
                problems.append(f"{name}: link {link['href']!r} {problem}")
        problems += [f"{name}: a table ends at {right} px on a {facts['width']} px page"
                     for right in facts["tables"] if right > facts["width"]]
        if facts["scrollWidth"] > facts["width"]:
            problems.append(f"{name}: the page is {facts['scrollWidth']} px wide, more than {facts['width']} px")
        for key in counts:
            counts[key] += len(facts[key])
    assert problems == [], "\n".join(problems)
    assert counts["images"] >= 10 and counts["links"] >= 20 and counts["tables"] >= 10, counts  # it looked at something
    assert page.outside == [], f"the report reached outside this machine: {page.outside}"
    assert page.script_errors == []


def _unresolved(link: dict, html: Path, ids: set[str]) -> str:
    """Why a link of ``html`` does not resolve ('' when it does): a local file that is not there, or
    an anchor with no element of that id. Links off this machine are not followed."""
    url = urlparse(link["url"])
    if url.scheme in ("http", "https", "mailto", "data"):
        return ""
    path = Path(unquote(url.path))
    if not path.is_file():
        return f"names {path}, which is not there"
    if url.fragment and path == html and unquote(url.fragment) not in ids:
        return "names an anchor the page does not have"
    return ""
