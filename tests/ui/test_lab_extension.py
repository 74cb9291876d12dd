"""The JupyterLab extension (extensions/jupyterlab-twinbench, issue 6) in a real JupyterLab, driven
by a real headless Chromium.

JupyterLab serves a temporary directory holding copies of the tutorials, against a plant in a
subprocess (as in test_jupyterlab.py, whose JupyterLab and plant helpers this reuses). The test
checks what a user sees: the launcher's twinbench cards (one per tutorial and "New twin
notebook"); "New twin notebook" opening a notebook made from the template; the status bar's
"0 twins", then "1 twin" once the notebook's cell started a twin against the plant; the command
"Open as twinbench app" in the command palette; its toolbar button opening the notebook in Voila
with twinbench's template (``?template=twinbench``: its header) in a new tab, which renders it
(the twin's repr, from Voila's own kernel); under JupyterLab's dark theme, the template's dark
theme (``&theme=dark``).

The extension is built by `make setup` (jlpm) and installed into the environment's
share/jupyter/labextensions; the test is skipped, with the reason, where it is not installed.
The JupyterLab page must make no off-host request (the Voila tab is not held to that here, its
off-host requests are aborted and printed; tests/ui/test_template.py checks the template's).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.ui.test_jupyterlab import KERNEL_IDLE_JS, JupyterLab, spawn_plant

REPO = Path(__file__).resolve().parents[2]
EXTENSION = "jupyterlab-twinbench"
TUTORIALS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _extension_missing() -> str | None:
    try:
        from jupyter_core.paths import jupyter_path
    except ImportError:
        return "jupyterlab is not installed (pip install twinbench[test])"
    for where in jupyter_path("labextensions"):
        if (Path(where) / EXTENSION / "package.json").is_file():
            return None
    return (f"the {EXTENSION} lab extension is not built and installed (`make setup` builds it "
            f"with jlpm into twinbench/labextension and installs it into the venv)")


pytestmark = pytest.mark.skipif(_extension_missing() is not None,
                                reason=str(_extension_missing()))

STATUS = "#jp-main-statusbar .jp-twinbench-status"


def _status_is(page, text: str, timeout: float) -> None:
    page.wait_for_function(
        "([sel, text]) => { const e = document.querySelector(sel); "
        "return !!e && e.textContent.trim() === text; }",
        arg=[STATUS, text], timeout=timeout * 1000, polling=250)


def test_launcher_new_twin_notebook_status_bar_and_open_as_app(browser, new_page, artifacts,
                                                               tmp_path):
    t0 = time.monotonic()
    root = tmp_path / "root"
    (root / "notebooks").mkdir(parents=True)
    for nb in TUTORIALS:
        shutil.copy(nb, root / "notebooks" / nb.name)
    artifacts.dir.mkdir(exist_ok=True)
    lab = plant = None
    times: dict[str, float] = {}
    try:
        plant = spawn_plant(["--speedup", "60", "--rate", "10", "--seed", "7"])
        lab = JupyterLab(root, {"TWINBENCH_OPCUA_URL": plant.opcua_url},
                         tmp_path / "jupyterlab-ext.log")
        plant.wait_ready(90)
        deadline = time.monotonic() + 90
        while not lab.answers():
            assert time.monotonic() < deadline, "jupyter lab did not answer on /api/status"
            time.sleep(0.25)
        times["lab up"] = time.monotonic() - t0

        page = new_page(height=1400)
        page.goto(f"{lab.base}/lab?token={lab.token}", timeout=90_000)

        # the launcher: a twinbench section with "New twin notebook" and one card per tutorial
        section = page.locator(".jp-Launcher-section:has(.jp-Launcher-sectionTitle:text-is("
                               "'twinbench'))")
        expected = ["New twin notebook"] + [
            f"{int(nb.name[:2])}. " for nb in TUTORIALS]
        try:
            page.wait_for_function(
                "([n]) => document.querySelectorAll('.jp-Launcher-section .jp-LauncherCard')"
                ".length && [...document.querySelectorAll('.jp-Launcher-section')].some(s => "
                "/twinbench/.test(s.innerText) && s.querySelectorAll('.jp-LauncherCard').length"
                " >= n)", arg=[len(expected)], timeout=90_000, polling=250)
        finally:
            artifacts("labext-1-launcher", page)
        labels = section.locator(".jp-LauncherCard-label").all_inner_texts()
        assert len(labels) == len(expected), labels
        assert labels[0] == "New twin notebook", labels
        for label, prefix in zip(labels[1:], expected[1:], strict=True):
            assert label.startswith(prefix), labels
        assert "1. Quickstart" in labels, labels
        times["launcher"] = time.monotonic() - t0

        # "New twin notebook": a notebook from the template opens with its kernel
        section.locator(".jp-LauncherCard:has-text('New twin notebook')").click()
        page.locator(".jp-NotebookPanel .jp-Notebook .jp-CodeCell").first.wait_for(
            timeout=60_000)
        try:
            page.wait_for_function(KERNEL_IDLE_JS, timeout=90_000, polling=250)
        finally:
            artifacts("labext-2-new-notebook", page)
        tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current").inner_text()
        assert tab.strip().startswith("twin") and tab.strip().endswith(".ipynb"), tab
        code = page.locator(".jp-Notebook .jp-CodeCell").first.inner_text()
        assert "tb.Twin(" in code and "twin.start()" in code, code
        saved = json.loads((root / tab.strip()).read_text())  # the template, on disk
        assert any("tb.Twin(" in "".join(c["source"]) for c in saved["cells"]), saved

        # the status bar: no twin in the fresh kernel...
        _status_is(page, "0 twins", 30)
        times["0 twins"] = time.monotonic() - t0
        # ...one once the template's first code cell started a twin against the plant
        page.locator(".jp-Notebook .jp-CodeCell .jp-InputArea-editor").first.click()
        page.keyboard.press("Shift+Enter")
        try:
            _status_is(page, "1 twin", 60)
        finally:
            artifacts("labext-3-one-twin", page)
        title = page.locator(STATUS).get_attribute("title") or ""
        assert "pump" in title and "samples" in title, title
        times["1 twin"] = time.monotonic() - t0

        # the command palette has the command
        page.keyboard.press("Escape")
        page.keyboard.press("Control+Shift+C")
        palette = page.locator(".lm-CommandPalette input")
        palette.wait_for(timeout=10_000)
        palette.fill("twinbench app")
        item = page.locator(".lm-CommandPalette-item:has-text('Open as twinbench app')")
        item.first.wait_for(timeout=10_000)
        assert item.count() == 1
        page.keyboard.press("Escape")

        # the toolbar button opens the notebook in Voila, in a new tab
        button = page.locator(".jp-NotebookPanel-toolbar .jp-twinbench-open-as-app")
        assert page.off_host.urls == [], f"off-host requests from JupyterLab: {page.off_host.urls}"
        # the Voila tab's off-host requests (CDN fonts, MathJax) are aborted, not waited for
        voila_off_host = type(page.off_host)()
        page.context.route("**/*", voila_off_host)
        with page.context.expect_page(timeout=30_000) as popup_info:
            button.click()
        app = popup_info.value
        app.wait_for_url(f"**/voila/render/{tab.strip()}?**", timeout=30_000)
        query = parse_qs(urlsplit(app.url).query)
        # twinbench's template, in its default (light) theme: JupyterLab's theme is light
        assert query == {"template": ["twinbench"]}, app.url
        try:
            # the template's header: the logo, "twinbench" and the notebook's name
            header = app.locator("header.twinbench-header")
            header.wait_for(state="visible", timeout=60_000)
            assert header.locator("svg.twinbench-logo").count() == 1
            assert header.inner_text().split() == ["twinbench", Path(tab.strip()).stem]
            assert app.evaluate("document.body.dataset.jpThemeLight") == "true"
            # Voila ran the notebook in its own kernel: the twin's repr is on the page
            app.get_by_text("Twin pump").first.wait_for(timeout=90_000)
        finally:
            artifacts("labext-4-voila", app)
        times["voila"] = time.monotonic() - t0
        app.close()

        # under JupyterLab's dark theme the app opens in the template's dark theme
        page.bring_to_front()
        page.keyboard.press("Control+Shift+C")
        palette.wait_for(timeout=10_000)
        palette.fill("JupyterLab Dark")
        page.locator(".lm-CommandPalette-item:has-text('Use Theme: JupyterLab Dark')"
                     ).first.click()
        page.wait_for_function("document.body.dataset.jpThemeLight === 'false'",
                               timeout=30_000, polling=250)
        with page.context.expect_page(timeout=30_000) as popup_info:
            button.click()
        dark = popup_info.value
        dark.wait_for_url(f"**/voila/render/{tab.strip()}?**", timeout=30_000)
        query = parse_qs(urlsplit(dark.url).query)
        assert query == {"template": ["twinbench"], "theme": ["dark"]}, dark.url
        try:
            dark.locator("header.twinbench-header").wait_for(state="visible", timeout=60_000)
            assert dark.evaluate("document.body.dataset.jpThemeLight") == "false"
        finally:
            artifacts("labext-5-voila-dark", dark)
        dark.close()
        times["voila dark"] = time.monotonic() - t0

        assert page.errors == [], f"errors in the JupyterLab page: {page.errors}"
        print("\n" + ", ".join(f"{k} at {v:.1f} s" for k, v in times.items())
              + f"; off-host requests of the Voila tab, aborted: {voila_off_host.urls}")
    finally:
        if lab is not None:
            lab.stop()
            shutil.copy(lab.log_path, artifacts.dir / "jupyterlab-ext.log")
        if plant is not None:
            plant.stop()
