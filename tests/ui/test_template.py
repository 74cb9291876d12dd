"""The twinbench Voila template (share/jupyter/voila/templates/twinbench) as installed.

Voila is started directly, ``voila --template=twinbench notebooks/dashboard.ipynb`` in a
subprocess, not through twinbench.app, without ``JUPYTER_PATH``: the template must be found where
``pip install`` (or ``make setup``) put it. The page is loaded in a real headless Chromium against
the simulated plant: header, loading indicator (seen before the widgets, gone after), widgets, no
request off loopback, and the dark theme. Screenshots go to test-artifacts/template-*.png.
"""

from __future__ import annotations

import filecmp
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "share" / "jupyter" / "voila" / "templates" / "twinbench"
NOTEBOOK = REPO / "notebooks" / "dashboard.ipynb"
CELL_COUNT = len(json.loads(NOTEBOOK.read_text())["cells"])

# What the page shows of the loading indicator, recorded from the first byte on (an init script
# runs before the page's own): when it is shown and gone, each text it says, and when the first
# widget view is in the page.
RECORD_LOADING_JS = """
window.__twinbench = [];
(() => {
  const record = (what, detail) =>
    window.__twinbench.push({t: Math.round(performance.now()), what, detail: detail || ""});
  let shown = false, widgets = false, text = null;
  const check = () => {
    const el = document.getElementById("twinbench-loading");
    const visible = !!el && !el.classList.contains("twinbench-loading-done");
    if (visible !== shown) {
      shown = visible;
      record(visible ? "shown" : "gone");
    }
    const title = document.querySelector("#twinbench-loading .twinbench-loading-title");
    if (title && !window.__twinbench.some(e => e.what === "title")) {
      record("title", title.textContent.trim());
    }
    const detail = document.getElementById("twinbench-loading-detail");
    if (detail && detail.textContent.trim() !== text) {
      text = detail.textContent.trim();
      record("text", text);
    }
    if (!widgets && document.querySelector("#rendered_cells .jupyter-widgets")) {
      widgets = true;
      record("widgets");
    }
  };
  new MutationObserver(check).observe(document, {childList: true, subtree: true,
    characterData: true, attributes: true, attributeFilter: ["class"]});
})();
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    """This environment without JUPYTER_PATH (nothing points Voila at the source tree)."""
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_PATH"}
    env.update(extra)
    return env


def _luminance(css_color: str) -> float:
    """0 (black) .. 1 (white) for a computed ``rgb(...)``/``rgba(...)`` colour."""
    parts = css_color[css_color.index("(") + 1:css_color.index(")")].split(",")
    r, g, b = (float(p) / 255 for p in parts[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_the_template_is_installed_where_voila_finds_it():
    pytest.importorskip("voila")
    env = _env()
    paths = json.loads(subprocess.run(
        [sys.executable, "-m", "jupyter", "--paths", "--json"], env=env, capture_output=True,
        text=True, check=True, timeout=60).stdout)
    installed = [Path(d) / "voila" / "templates" / "twinbench" for d in paths["data"]]
    installed = [d for d in installed if (d / "index.html.j2").is_file()]
    assert installed, f"no voila/templates/twinbench in the data directories {paths['data']}"
    # Voila's own template finder: twinbench first, then what it extends (lab, then base)
    finder = ("import json; from voila.paths import collect_template_paths; print(json.dumps("
              "collect_template_paths(['voila', 'nbconvert'], 'twinbench', prune=True)))")
    found = json.loads(subprocess.run([sys.executable, "-c", finder], env=env,
                                      capture_output=True, text=True, check=True,
                                      timeout=60).stdout)
    assert Path(found[0]) == installed[0], found
    names = [Path(p).name for p in found]
    assert names.index("twinbench") < names.index("lab") < names.index("base"), names
    # the installed copy is the tree's (after an edit, `make setup` copies it again)
    compare = filecmp.dircmp(SOURCE, installed[0])
    stale = []

    def walk(cmp: filecmp.dircmp) -> None:
        stale.extend(cmp.left_only + cmp.right_only + cmp.diff_files + cmp.funny_files)
        for sub in cmp.subdirs.values():
            walk(sub)

    walk(compare)
    assert not stale, f"{installed[0]} differs from {SOURCE} in {stale}: run `make setup`"


def test_twinbench_app_falls_back_to_the_source_tree_copy_and_says_so(monkeypatch, caplog):
    """A source tree used without installing it: VoilaServer points Voila at the tree's copy
    (share/jupyter on JUPYTER_PATH) with a warning. Stopped at the point of starting Voila."""
    from twinbench import app

    class Started(Exception):
        pass

    seen: dict[str, str] = {}

    def popen(cmd: list[str], *, env: dict[str, str], **kwargs: Any) -> None:
        seen.update(env)
        raise Started(cmd)

    monkeypatch.setattr(app, "template_dir", lambda env=None: None)
    monkeypatch.setattr(app.subprocess, "Popen", popen)
    with caplog.at_level("WARNING", logger="twinbench.app"), pytest.raises(Started) as started:
        app.VoilaServer(port=_free_port()).start()
    assert "--template=twinbench" in started.value.args[0]
    assert seen["JUPYTER_PATH"].split(os.pathsep)[0] == str(REPO / "share" / "jupyter")
    assert "not installed" in caplog.text and str(SOURCE) in caplog.text


@pytest.fixture(scope="module")
def plant() -> Iterator[Any]:
    from twinbench.plant import PlantProcess

    plant = PlantProcess(["--speedup", "10", "--rate", "10", "--seed", "3"]).start(60)
    try:
        yield plant
    finally:
        plant.stop()


@contextmanager
def voila(opcua_url: str, run_dir: Path, *options: str) -> Iterator[str]:
    """``voila --template=twinbench notebooks/dashboard.ipynb [options]`` on a free loopback
    port, run from `run_dir`; yields its address."""
    port = _free_port()
    script = Path(sys.executable).with_name("voila")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "voila"]
    cmd += ["--template=twinbench", str(NOTEBOOK), *options, "--no-browser", f"--port={port}",
            "--Voila.ip=127.0.0.1", "--VoilaExecutor.timeout=120", "--show_tracebacks=True",
            # JupyterLab-only; in Voila it would log an error in the console
            "--VoilaConfiguration.extension_denylist", "jupyterlab-twinbench"]
    # the kernel imports twinbench from this tree even where it is not installed
    env = _env(TWINBENCH_OPCUA_URL=opcua_url, TWINBENCH_WRITABLE="",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    log_path = run_dir / "voila.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=run_dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"voila exited: {log_path.read_text()[-3000:]}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"voila not listening: {log_path.read_text()}"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)  # Voila and its kernels
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a kernel left behind
        except (ProcessLookupError, PermissionError):
            pass


def open_app(new_page: Any, url: str, loading_shot: Any = None) -> tuple[Any, list[str]]:
    """The app in a new page, once its widgets and the first samples are drawn; with every
    address the page asked for (requests and websockets). `loading_shot(page)` is called
    while the loading indicator shows."""
    page = new_page(height=1000)
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.on("websocket", lambda ws: asked.append(ws.url))
    page.add_init_script(RECORD_LOADING_JS)
    # the page streams in while the notebook runs: the load event comes only at its end
    page.goto(url, timeout=120_000, wait_until="commit")
    if loading_shot is not None:
        page.locator("#twinbench-loading").wait_for(state="visible", timeout=60_000)
        loading_shot(page)
    page.locator(".jupyter-widgets").first.wait_for(state="visible", timeout=120_000)
    page.get_by_text("samples").first.wait_for(timeout=60_000)  # the dashboard's live header
    return page, asked


def assert_loopback_only(page: Any, asked: list[str]) -> None:
    assert page.off_host.urls == [], f"requests off loopback: {page.off_host.urls}"
    elsewhere = [u for u in asked if not u.startswith(("data:", "blob:"))
                 and urlsplit(u).hostname != "127.0.0.1"]
    assert asked and not elsewhere, f"asked of other hosts: {elsewhere}"


def test_the_app_has_the_header_a_loading_indicator_and_works_offline(
        browser, new_page, plant, artifacts, tmp_path):
    with voila(plant.opcua_url, tmp_path) as url:  # no --theme: light is the default
        page, asked = open_app(new_page, url, lambda p: artifacts("template-loading", p))
        try:
            # the indicator goes once the widgets are drawn
            page.wait_for_function(
                "window.__twinbench.some(e => e.what === 'gone')", timeout=60_000)
            events = page.evaluate("window.__twinbench")
            header = page.locator("header.twinbench-header")
            assert header.is_visible()
            assert header.locator("svg.twinbench-logo").count() == 1  # inline: no request
            assert header.inner_text().split() == ["twinbench", "dashboard"]
            assert page.title() == "dashboard"
            assert page.locator("#twinbench-loading").count() == 0
            assert_loopback_only(page, asked)
            assert page.evaluate("document.body.dataset.jpThemeLight") == "true"
            assert _luminance(page.evaluate(
                "getComputedStyle(document.body).backgroundColor")) > 0.9
            assert "Traceback" not in page.inner_text("body")
        finally:
            artifacts("template-light", page)
    what = [e["what"] for e in events]
    # shown first (before any widget), gone after the widgets were drawn
    assert what[0] == "shown", events
    assert next(e["detail"] for e in events if e["what"] == "title") == "Starting the twin…"
    assert what.index("shown") < what.index("widgets") < what.index("gone"), events
    texts = [e["detail"] for e in events if e["what"] == "text"]
    assert texts[0] == f"executing cell 1 of {CELL_COUNT}", texts
    allowed = {f"executing cell {i} of {CELL_COUNT}" for i in range(1, CELL_COUNT + 1)}
    assert set(texts) <= allowed | {"drawing the widgets"}, texts
    print("loading indicator:", events)


def test_the_dark_theme_applies(browser, new_page, plant, artifacts, tmp_path):
    with voila(plant.opcua_url, tmp_path, "--theme=dark") as url:
        page, asked = open_app(new_page, url)
        try:
            assert page.evaluate("document.body.dataset.jpThemeLight") == "false"
            body = page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert _luminance(body) < 0.15, body
            header = page.locator("header.twinbench-header")
            assert _luminance(header.evaluate("e => getComputedStyle(e).backgroundColor")) < 0.2
            assert _luminance(header.evaluate("e => getComputedStyle(e).color")) > 0.7
            # Bokeh's canvas colours are its own: the template inverts the plots in the dark
            # (the top Bokeh element of a plot: a GridPlot in the dashboard, whatever the layout)
            plot = page.locator("#rendered_cells [class^='bk-']:not(.bk-Notifications)").first
            plot.wait_for(timeout=60_000)
            plot_filter = plot.evaluate("e => getComputedStyle(e).filter")
            assert "invert" in plot_filter, plot_filter
            assert_loopback_only(page, asked)
        finally:
            artifacts("template-dark", page)
