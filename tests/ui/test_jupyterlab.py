"""A tutorial notebook opened and run in JupyterLab, in a real headless Chromium (issue 5).

The quickstart ("a live twin in ten lines") is copied to a temporary directory (JupyterLab's
autosave never touches the repository), JupyterLab serves that directory with a random token
against a plant in a subprocess, and the page runs every cell through the Run menu, as a user
would. The test waits for the last code cell's execution count, fails on any error output, and
checks what the notebook visibly shows (the state Dataset, the wear estimate, the twin stopped).

The page must work offline: every request off loopback is aborted and the test fails if the
page made one. JupyterLab's own network features (news, update check, announcements) are off.
Screenshots go to test-artifacts/jlab-*.png, JupyterLab's log to test-artifacts/jupyterlab.log.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from twinbench.plant import PlantProcess

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "01_quickstart.ipynb"


def _jupyterlab_missing() -> str | None:
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        return "jupyterlab is not installed (pip install jupyterlab)"
    return None


pytestmark = pytest.mark.skipif(_jupyterlab_missing() is not None,
                                reason=str(_jupyterlab_missing()))

# Nothing may reach the network. The server's side: no news feed (LabApp.news_url=None), no
# update check (NeverCheckForUpdate), a read-only extension manager (no PyPI searches). The page's
# side: the announcements plugin (the "receive official Jupyter news?" toast, which would ask the
# server for news and updates) is disabled in the page config. JupyterLab bundles its fonts,
# MathJax and icons, so the page itself makes no off-host request; the test asserts it.
PAGE_CONFIG = {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}

# The notebook's kernel is there (its name in the toolbar) and idle (toolbar and status bar).
KERNEL_IDLE_JS = """() => {
  const name = document.querySelector('.jp-NotebookPanel .jp-Toolbar-kernelName');
  const indicator = document.querySelector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator');
  const bar = document.querySelector('#jp-main-statusbar');
  return !!(name && /Python/.test(name.getAttribute('aria-label') || name.innerText)
            && indicator && indicator.dataset.status === 'idle'
            && bar && /\\|\\s*Idle/.test(bar.innerText));
}"""

# The last code cell's input prompt: "[n]:" once it ran; "[*]:" while queued or running, "[ ]:"
# before. Also reports error outputs (a cell that raised) so that the wait ends at once.
PROGRESS_JS = """() => {
  const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];
  const texts = sel => [...document.querySelectorAll(sel)].map(e => e.innerText);
  const errors = texts('.jp-Notebook [data-mime-type="application/vnd.jupyter.error"]').concat(
    texts('.jp-Notebook [data-mime-type="application/vnd.jupyter.stderr"]')
      .filter(t => t.includes('Traceback')));
  if (errors.length) return {errors};
  if (!cells.length) return null;
  const prompt = cells[cells.length - 1].querySelector('.jp-InputPrompt');
  const text = prompt ? prompt.innerText.trim() : '';
  return /^\\[\\d+\\]:?$/.test(text) ? {done: text, cells: cells.length} : null;
}"""


def spawn_plant(args: list[str]) -> PlantProcess:
    """``twinbench plant`` in a subprocess, started without waiting (``wait_ready(90)`` later):
    it starts alongside JupyterLab on a loaded 2-core machine."""
    return PlantProcess(args).start(wait=False)


class JupyterLab:
    """``jupyter lab`` in a subprocess serving `root`, loopback only, with a random token."""

    def __init__(self, root: Path, env: dict[str, str], log: Path) -> None:
        from twinbench.app import free_port

        self.root = root
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        config = root.parent / "jupyter-config"  # user config, settings and workspaces: fresh
        (config / "labconfig").mkdir(parents=True, exist_ok=True)
        (config / "labconfig" / "page_config.json").write_text(json.dumps(PAGE_CONFIG))
        runtime = root.parent / "jupyter-runtime"
        runtime.mkdir(exist_ok=True)
        full_env = dict(os.environ)
        # JUPYTER_DATA_DIR stays as it is: the kernelspecs are found through it / the venv.
        full_env.update({"JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(runtime),
                         "JUPYTERLAB_SETTINGS_DIR": str(config / "lab" / "user-settings"),
                         "JUPYTERLAB_WORKSPACES_DIR": str(config / "lab" / "workspaces"),
                         "PYTHONPATH": os.pathsep.join(
                             filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
        full_env.update(env)
        self.log_path = log
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--allow-root", "--no-browser",
             f"--ServerApp.token={self.token}", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
             f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
             "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             # the extension manager would search PyPI from the server
             "--LabApp.extension_manager=readonly"],
            cwd=root, env=full_env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT)

    def answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with code {self.proc.returncode}:\n"
                               f"{self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.base}/api/status?token={self.token}",
                                        timeout=5) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def url(self, notebook: str) -> str:
        return f"{self.base}/lab/tree/{notebook}?token={self.token}"

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # shuts its kernels down too
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def test_quickstart_runs_in_jupyterlab(browser, new_page, artifacts, wait_until, tmp_path):
    t0 = time.monotonic()
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    artifacts.dir.mkdir(exist_ok=True)
    # The plant and JupyterLab start side by side; the kernel inherits TWINBENCH_OPCUA_URL from
    # JupyterLab's environment. As in test_tutorials the plant runs at speedup 120 (the notebook
    # waits on conditions, not for fixed times).
    lab = plant = None
    try:
        plant = spawn_plant(["--speedup", "120", "--rate", "10", "--seed", "7"])
        lab = JupyterLab(root, {"TWINBENCH_OPCUA_URL": plant.opcua_url},
                         tmp_path / "jupyterlab.log")
        plant.wait_ready(90)
        plant_ready = time.monotonic() - t0
        wait_until(lab.answers, 90, "jupyter lab to answer on /api/status", interval=0.25)
        started = time.monotonic() - t0

        page = new_page(height=3000)  # windowed notebooks render lazily: all cells in view
        page.goto(lab.url(NOTEBOOK.name), timeout=90_000)
        notebook = page.locator(".jp-NotebookPanel .jp-Notebook")
        notebook.wait_for(state="visible", timeout=90_000)
        page.locator(".jp-Notebook .jp-CodeCell").last.wait_for(timeout=60_000)
        # the kernel has started and is idle (the toolbar shows "No Kernel" and an "idle"
        # indicator before the kernel is there: wait for its name and the status bar's "Idle")
        try:
            page.wait_for_function(KERNEL_IDLE_JS, timeout=90_000, polling=250)
        finally:  # on a timeout too: the screenshot shows where it stood
            artifacts("jlab-1-opened", page)
        opened = time.monotonic() - t0

        page.locator(".lm-MenuBar-item:has(.lm-MenuBar-itemLabel:text-is('Run'))").click()
        page.locator(".lm-Menu-item:has(.lm-Menu-itemLabel:text-is('Run All Cells'))").click()
        try:
            progress = page.wait_for_function(PROGRESS_JS, timeout=120_000,
                                              polling=250).json_value()
        finally:
            artifacts("jlab-2-ran", page)
        ran = time.monotonic() - t0

        assert "errors" not in progress, "a cell raised:\n" + "\n\n".join(progress["errors"])
        outputs = page.locator(".jp-Notebook .jp-OutputArea").all_inner_texts()
        text = "\n".join(outputs)
        assert "Traceback" not in text, text[-3000:]
        # what the notebook shows: the running twin with its samples, its state as an xarray
        # Dataset (rich HTML repr), the wear estimate, the last rows as a table, the twin stopped
        html = ".jp-Notebook .jp-OutputArea .jp-RenderedHTMLCommon"
        samples = [int(n) for n in re.findall(r"Twin pump\W+running; (\d+) samples", text)]
        assert samples and max(samples) > 60, text[-3000:]  # the cell waited for > 60 samples
        assert page.locator(f"{html} .xr-wrap").count() >= 1, text[-3000:]
        assert "xarray.Dataset" in text, text[-3000:]
        assert re.search(r"estimated wear\s+-?\d+\.\d{4} ± \d+\.\d{4}", text), text[-3000:]
        table = page.locator(f"{html} table.dataframe")  # the pandas table of the last rows
        assert table.count() == 1 and "speed_predicted" in table.inner_text(), text[-3000:]
        assert "twin running: False" in text, text[-3000:]
        assert page.off_host.urls == [], f"off-host requests from the page: {page.off_host.urls}"
        assert page.errors == [], f"errors in the page: {page.errors}"
        print(f"\nplant ready at {plant_ready:.1f} s, jupyterlab answered at {started:.1f} s, "
              f"notebook open with an idle kernel at {opened:.1f} s, all {progress['cells']} "
              f"code cells ran at {ran:.1f} s (last prompt {progress['done']})")
    finally:
        if lab is not None:
            lab.stop()
            shutil.copy(lab.log_path, artifacts.dir / "jupyterlab.log")
        if plant is not None:
            plant.stop()
