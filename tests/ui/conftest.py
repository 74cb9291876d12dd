"""Browser fixtures: headless Chromium (Debian's, through Playwright) and the dashboard served
by Voila against the plant in a subprocess.

Everything here is skipped, with the reason, where Chromium or Playwright is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("TWINBENCH_CHROMIUM", "/usr/bin/chromium")
# Debian's Chromium in a container: no sandbox, no GPU, nothing that phones home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _missing() -> str | None:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) \
            and not shutil.which(CHROMIUM):
        return f"chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (python) is not installed (pip install twinbench[test])"
    return None


MISSING = _missing()


# Module scope: Playwright's sync API keeps an event loop running in the main thread while it
# is open, and later tests (doctests calling asyncio.run) must not find one.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium for the session."""
    if MISSING:
        pytest.skip(MISSING)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class OffHost:
    """Requests a page made to anything but loopback: aborted (the page must work offline) and
    recorded for the test to assert on."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, route: Any) -> None:
        url = route.request.url
        host = urlsplit(url).hostname or ""
        if url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost", "::1"):
            route.continue_()
        else:
            self.urls.append(url)
            route.abort()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """``new_page(height=1000)`` -> a page (1280 wide) whose off-host requests are aborted and
    listed in ``page.off_host.urls`` and whose console errors are in ``page.errors``."""
    contexts: list[Any] = []

    def make(height: int = 1000) -> Any:
        ctx = browser.new_context(viewport={"width": 1280, "height": height})
        contexts.append(ctx)
        page = ctx.new_page()
        page.off_host = OffHost()
        page.errors = []
        page.route("**/*", page.off_host)
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        return page

    try:
        yield make
    finally:
        for ctx in contexts:
            ctx.close()


@pytest.fixture(scope="session")
def artifacts() -> Callable[[str, Any], Path]:
    """``shot(name, page)``: save a full-page screenshot to test-artifacts/<name>.png (None
    when the page could not be captured)."""
    ARTIFACTS.mkdir(exist_ok=True)

    def shot(name: str, page: Any) -> Path | None:
        # Best effort: an artifact must never be what fails a test (a renderer busy under load
        # can take longer than Playwright's 30 s to produce a frame).
        path = ARTIFACTS / f"{name}.png"
        try:
            page.screenshot(path=str(path), full_page=True, timeout=60_000)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            print(f"screenshot {name} failed: {exc}".splitlines()[0])
            return None
        return path

    shot.dir = ARTIFACTS
    return shot


@pytest.fixture(scope="module")
def dashboard_app(tmp_path_factory: Any) -> Iterator[Any]:
    """The dashboard in Voila (writes enabled for speed_setpoint) on a plant at speedup 10.
    Yields the VoilaServer with ``.plant`` (``.opcua_url``) and ``.audit`` set."""
    if MISSING:
        pytest.skip(MISSING)
    from twinbench.app import VoilaServer, dashboard_env
    from twinbench.plant import PlantProcess

    # a subprocess: the browser test's process (and its GIL) never slows the plant down
    plant = PlantProcess(["--speedup", "10", "--rate", "10", "--seed", "3"]).start(60)
    audit = tmp_path_factory.mktemp("voila") / "audit.jsonl"
    server = VoilaServer(env=dashboard_env(plant.opcua_url, ["speed_setpoint"], audit),
                         extra=["--show_tracebacks=True"])
    try:
        server.start()
        server.plant = plant
        server.audit = audit
        yield server
    finally:
        server.stop()
        plant.stop()
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "voila.log").write_text(server.log())  # Voila's and the kernel's log
