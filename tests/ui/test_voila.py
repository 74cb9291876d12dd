"""The dashboard as a Voila app in a real headless Chromium, and `twinbench demo`.

The page must work offline: every request off loopback is aborted and the test fails if the
page made one. Screenshots of each step go to test-artifacts/.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import twinbench as tb

REPO = Path(__file__).resolve().parents[2]

# The number of rows in the page's Bokeh data sources (the live plot's points), -1 before
# BokehJS is there. Counted in the browser, so it proves the points reached the page.
POINT_COUNT_JS = """() => {
  if (!window.Bokeh || !window.Bokeh.documents) return -1;
  let n = 0;
  for (const doc of window.Bokeh.documents)
    for (const m of doc.all_models)
      if (m.data !== undefined && typeof m.get_length === "function") n += m.get_length() || 0;
  return n;
}"""


def has_dashboard() -> bool:
    try:
        from twinbench.ui import Dashboard  # noqa: F401
    except ImportError:
        return False
    return True


needs_dashboard = pytest.mark.skipif(not has_dashboard(),
                                     reason="twinbench.ui.Dashboard does not exist yet")


@pytest.fixture(scope="module")
def dashboard(browser, dashboard_app, artifacts):
    """One page on the dashboard for the module (each page load starts a kernel and a twin:
    the tests go through the app in order, as an operator would)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = ctx.new_page()
    page.console = []
    page.on("console", lambda m: m.type in ("error", "warning") and page.console.append(m.text[:300]))
    page.on("pageerror", lambda e: page.console.append(f"pageerror: {e}"))
    page.off_host = []  # the page must work offline: it may ask nothing of other hosts
    page.on("request", lambda req: None if req.url.startswith(
        ("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")) else page.off_host.append(req.url))
    t0 = time.monotonic()
    page.goto(dashboard_app.url, timeout=90_000)
    try:
        page.locator(".jupyter-widgets").first.wait_for(state="visible", timeout=60_000)
        page.get_by_text("samples").first.wait_for(timeout=60_000)  # the live header
    finally:
        artifacts("voila-1-loaded", page)
        (artifacts.dir / "voila-console.txt").write_text("\n".join(page.console))
    page.ready_s = time.monotonic() - t0
    yield page
    # everything the page logged while the module's tests ran, for a failure's post-mortem
    (artifacts.dir / "voila-console.txt").write_text("\n".join(page.console))
    ctx.close()


def test_dashboard_loads_offline(dashboard, artifacts):
    page = dashboard
    assert page.off_host == [], "the page asked for off-host resources"
    assert "Traceback" not in page.inner_text("body"), page.inner_text("body")[-2000:]
    print(f"dashboard widgets visible in {page.ready_s:.1f} s")


def test_the_live_plot_grows(dashboard, artifacts):
    page = dashboard
    page.wait_for_function(f"({POINT_COUNT_JS})() > 0", timeout=30_000)
    first = page.evaluate(POINT_COUNT_JS)
    page.wait_for_function(f"({POINT_COUNT_JS})() > {first}", timeout=30_000)
    artifacts("voila-2-plot-grew", page)
    assert page.evaluate(POINT_COUNT_JS) > first


# The variables the first legend row offers, and whether their renderers are visible.
LEGEND_JS = """() => {
  for (const doc of window.Bokeh.documents)
    for (const m of doc.all_models)
      if (m.type === "CheckboxGroup" || (m.constructor && m.constructor.name === "CheckboxGroup")
          || (m.labels !== undefined && m.active !== undefined && m.inline !== undefined)) {
        const cb = m.js_property_callbacks["change:active"][0];
        return {labels: m.labels, active: m.active,
                visible: cb.args.get ? cb.args.get("groups")[0].map(r => r.visible)
                                     : cb.args.groups[0].map(r => r.visible)};
      }
  return null;
}"""


def test_the_canvas_patch_applies_and_the_legend_hides_a_variable(dashboard, artifacts):
    """BokehJS's per-paint CSS lookups are switched off (a Bokeh upgrade that moves the
    internals shows here as "skipped"), and a legend checkbox hides its variable's lines."""
    page = dashboard
    page.wait_for_function("window.__twinbenchCanvasPatch !== undefined", timeout=30_000)
    assert page.evaluate("window.__twinbenchCanvasPatch") == "applied"
    legend = page.evaluate(LEGEND_JS)
    assert legend is not None and legend["labels"][0] == "speed"
    assert all(legend["visible"])
    page.locator(".bk-input-group label").first.click()
    page.wait_for_function(f"!({LEGEND_JS})().visible.some(v => v)", timeout=10_000)
    artifacts("voila-legend-speed-hidden", page)
    page.locator(".bk-input-group label").first.click()
    page.wait_for_function(f"({LEGEND_JS})().visible.every(v => v)", timeout=10_000)


def read_setpoint(url: str) -> float:
    """The plant's speed setpoint read over OPC-UA (on a worker thread: Playwright's sync API
    keeps an event loop running on this one)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _read_setpoint(url)).result(30)


async def _read_setpoint(url: str) -> float:
    src = tb.connect(url, {"speed_setpoint": "ns=2;s=Pump1.speed_setpoint"})
    async with src:
        batch = await src.read_values(["speed_setpoint"])
    return float(batch.value[0])


def control_row(page):
    """The control panel's speed_setpoint box and its Write button (the scenario panel has a
    speed_setpoint box too: take the row whose own children are the box and the button)."""
    row = page.locator(".widget-hbox:has(> button:has-text('Write'))") \
        .filter(has_text="speed_setpoint").first
    return row.locator("input").first, row.locator("> button", has_text="Write")


@needs_dashboard
def test_confirmed_write_changes_the_plant_and_is_audited(dashboard, dashboard_app, artifacts):
    page = dashboard
    box, write = control_row(page)
    box.scroll_into_view_if_needed()
    box.fill("2300")
    box.press("Enter")
    write.click()
    confirm = page.get_by_role("button", name="Confirm", exact=True)
    try:
        confirm.wait_for(state="visible", timeout=45_000)
    finally:
        artifacts("voila-4-after-write-click", page)
    artifacts("voila-4-confirm", page)
    confirm.click()
    deadline = time.monotonic() + 20
    while (value := read_setpoint(dashboard_app.plant.opcua_url)) != 2300.0:
        assert time.monotonic() < deadline, value
        time.sleep(0.2)
    page.get_by_text("written").first.wait_for(timeout=45_000)
    artifacts("voila-5-written", page)
    body = page.inner_text("body")
    assert "2300" in body and "operator" in body  # the audit trail row


@needs_dashboard
def test_out_of_limit_write_is_refused_with_a_message(dashboard, dashboard_app, artifacts):
    page = dashboard
    before = read_setpoint(dashboard_app.plant.opcua_url)
    box, write = control_row(page)
    box.fill("5000")
    box.press("Enter")
    write.click()
    page.get_by_text("refused").first.wait_for(timeout=45_000)
    artifacts("voila-6-refused", page)
    # the limits are checked before anyone is asked: no confirmation, nothing written
    assert not page.get_by_role("button", name="Confirm", exact=True).is_visible()
    assert "3000" in page.inner_text("body")  # the message names the limit
    assert read_setpoint(dashboard_app.plant.opcua_url) == before


@needs_dashboard
def test_running_a_scenario_draws_the_fan_chart(dashboard, artifacts):
    page = dashboard
    before = page.evaluate(POINT_COUNT_JS)
    # (an icon's glyph is part of a button's accessible name: match the text instead)
    run = page.locator("button.jupyter-button", has_text=re.compile(r"\bRun\b")).first
    run.scroll_into_view_if_needed()
    run.click()
    page.get_by_text("projections").first.wait_for(timeout=60_000)
    # the fan chart adds data sources (quantile bands) to the page
    page.wait_for_function(f"({POINT_COUNT_JS})() > {before}", timeout=20_000)
    artifacts("voila-3-fan-chart", page)


def test_twinbench_demo_read_only_serves_the_dashboard_and_stops_cleanly(tmp_path):
    """The public showcase: no sign-in, no write path (sign-in: tests/ui/test_demo_signin.py)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "twinbench", "demo", "--port", "0", "--opcua-port", "0",
         "--mqtt", "none", "--audit", str(tmp_path / "audit.jsonl"), "--read-only"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.startswith("twinbench demo ready") or time.monotonic() > deadline:
                break
        assert lines and lines[-1].startswith("twinbench demo ready"), (lines, proc.stderr)
        url = next(line.split()[-1] for line in lines if line.startswith("dashboard"))
        opcua = next(line.split()[-1] for line in lines if line.startswith("plant opcua"))
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=120) as resp:  # renders the notebook
            page = resp.read().decode()
        assert resp.status == 200 and "dashboard" in page.lower()
        assert any(line.startswith("writable    none (read-only)") for line in lines), lines
        assert any(line.startswith("sign in     off") for line in lines), lines
        # the twinbench template drops the lab template's Font Awesome CDN links
        assert "fontawesome-free@^5/css/all.min.css" not in page
        assert read_setpoint(opcua) >= 0
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "twinbench demo stopped" in out
    finally:
        stop_demo(proc)


def stop_demo(proc: subprocess.Popen) -> None:
    """Stop a `twinbench demo` process: SIGTERM first (the demo stops its Voila, in its own
    session, too), then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
