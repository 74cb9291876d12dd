"""The workbench components without a browser: built on a replayed fault day and on the plant."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

import twinbench as tb
from twinbench.demo import pump_fault_day
from twinbench.kernel.detect import Cusum

ui = pytest.importorskip("twinbench.ui")

MEASURED = ["speed", "flow_rate", "motor_temperature", "vibration", "current", "power"]
PUMP_TAGS = {name: f"ns=2;s=Pump1.{name}" for name in (*MEASURED, "speed_setpoint")}
R_PLANT = {"speed": 4.0, "flow_rate": 1.0, "motor_temperature": 0.09, "vibration": 0.0025,
           "current": 0.04, "power": 0.04}


@pytest.fixture(scope="module")
def recording():
    _, meas = pump_fault_day(hours=3.0)
    rec = meas[MEASURED].copy()
    for name in MEASURED:
        rec[f"{name}_quality"] = ("time", np.zeros(rec.sizes["time"], np.uint8))
    R = {m: float(meas[m].attrs["noise_std"]) ** 2 for m in MEASURED}
    return rec, R


def replay_twin(recording, **options):
    rec, R = recording
    return tb.Twin(tb.models.pump(), tb.replay(rec, speed=None), R=R, max_step=0.5,
                   detectors={"vibration": Cusum(k=0.5, h=5.0, warmup=20)}, **options)


async def feed(twin, parts: int = 20, pause: float = 0.0):
    """Play the recording through the twin in `parts` batches, yielding to the loop between."""
    await twin.source.start()
    batches = [b async for b in twin.source.batches()]
    await twin.source.stop()
    from twinbench.io.batch import concat

    data = concat(batches)
    for idx in np.array_split(np.arange(len(data)), parts):
        twin.process(data.take(idx))
        await asyncio.sleep(pause)


def ui_tasks(name: str | None = None) -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if not t.done() and (
        name is None or t.get_name() == name)]


def test_import_twinbench_stays_light():
    code = ("import sys, twinbench; heavy = [m for m in ('ipywidgets', 'bokeh', 'jupyter_bokeh', "
            "'twinbench.ui') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_live_plot_waits_for_the_page_to_paint(recording):
    """With a view attached, at most max_unacked updates are in flight; the page's
    acknowledgement (an ack model's tags, set by the CustomJS and synced back by jupyter_bokeh)
    lets the next one go, and a page that never answers is given up on after ACK_TIMEOUT."""
    twin = replay_twin(recording)
    plot = ui.LivePlot(twin, MEASURED, max_unacked=2)
    rows = []

    async def feed():
        await twin.source.start()
        rows.extend([b async for b in twin.source.batches()])

    asyncio.run(feed())
    from twinbench.io.batch import concat

    chunks = iter(np.array_split(np.arange(len(concat(rows))), 20))
    data = concat(rows)

    def tick():
        twin.process(data.take(next(chunks)))
        return plot.update()

    assert tick() > 0  # no view yet: the window goes out
    plot.model._view_count = 1  # a view attaches: it gets the window again
    assert plot.unacked == 2 and plot.waiting_for_page
    assert tick() == 0  # two updates in flight: the rows wait
    plot._ack.tags = [plot._sent_seq]  # the page painted them (as jupyter_bokeh syncs it)
    assert plot.unacked == 0 and tick() > 0 and tick() > 0 and tick() == 0
    plot._acked_at -= plot.ACK_TIMEOUT  # a page that stopped answering is not waited for
    assert tick() > 0
    with pytest.raises(ValueError, match="max_unacked"):
        ui.LivePlot(twin, MEASURED, max_unacked=0)


def test_live_plot_primes_the_next_view_with_its_window(recording):
    """With no view attached, prime() bakes the window into the widget's initial state (what a
    page that opens later renders first), without patch messages to no one."""
    import json

    from bokeh.core.json_encoder import serialize_json

    twin = replay_twin(recording)
    plot = ui.LivePlot(twin, MEASURED)

    async def feed():
        await twin.source.start()
        async for batch in twin.source.batches():
            twin.process(batch)

    asyncio.run(feed())
    sent = []
    plot.model.send = lambda content, buffers=None: sent.append(content)
    plot.prime()
    assert plot.point_count > 0 and sent == []
    bundle = serialize_json(plot.model.render_bundle)
    assert json.dumps(plot.source.data["time"][-1]) in bundle


def test_live_plot_legends_axes_and_alarm_rows(recording):
    """A checkbox row per figure toggles its variables' renderers; one time axis, at the
    bottom; the alarms figure names its rows on the y axis."""
    from bokeh.models import CheckboxGroup, CustomJS

    twin = replay_twin(recording)
    plot = ui.LivePlot(twin, MEASURED)
    figures = plot._all_figures()
    assert all(not f.legend for f in figures)  # no canvas legends
    for fig, group in plot.legends.items():
        assert isinstance(group, CheckboxGroup) and group.active == list(range(len(group.labels)))
        (callback,) = group.js_property_callbacks["change:active"]
        assert isinstance(callback, CustomJS)
        # each entry's renderers belong to that figure
        for renderers in callback.args["groups"]:
            assert renderers and all(r in fig.renderers for r in renderers)
    rpm = plot.figures["rpm"]
    assert plot.legends[rpm].labels == ["speed"]
    # the estimate line and the measured dots (and the ±2σ band where the twin has one)
    assert len(plot.legends[rpm].js_property_callbacks["change:active"][0].args["groups"][0]) >= 2
    assert [f.xaxis[0].visible for f in figures] == [False] * (len(figures) - 1) + [True]
    alarms = plot.alarm_figure
    assert alarms.yaxis[0].major_label_overrides == dict(enumerate(twin.alarm_names))
    assert plot.legends.keys() == {*plot.figures.values(), plot.residual_figure}


def test_live_plot_streams_decimates_and_starts_once(recording):
    twin = replay_twin(recording)
    plot = ui.LivePlot(twin, [*MEASURED, "wear"], window=3 * 3600.0, rate_hz=50.0,
                       max_points=40)
    # variables sharing units share axes; separate units get separate figures
    assert set(plot.figures) == {"rpm", "m3/h", "degC", "mm/s", "A", "kW", "1"}
    assert plot.residual_figure is not None and plot.alarm_figure is not None
    assert plot.point_count == 0

    # a view is attached (what the front end reports); acknowledgements: see the next test
    plot.model._view_count = 1
    plot.max_unacked = 10**6

    async def main():
        plot.start()
        plot.start()  # a re-run cell: still one task
        assert len(ui_tasks("twinbench LivePlot")) == 1
        counts = []
        await twin.source.start()
        batches = [b async for b in twin.source.batches()]
        from twinbench.io.batch import concat

        data = concat(batches)
        for idx in np.array_split(np.arange(len(data)), 12):
            twin.process(data.take(idx))
            await asyncio.sleep(0.05)  # > 2 ticks at 50 Hz
            counts.append(plot.point_count)
        plot.stop()
        await twin.stop()
        await asyncio.sleep(0)
        assert not plot.running
        return counts, len(data) // len(MEASURED)

    counts, rows = asyncio.run(main())
    assert counts[0] > 0 and counts[-1] > counts[0], counts  # streaming adds points
    assert max(counts) <= 40 < rows  # decimation and rollover cap what the browser holds
    data = plot.source.data
    assert np.all(np.diff(data["time"]) > 0)  # no row sent twice
    # the ±2σ band surrounds the estimate
    assert np.all(data["wear_lo"] <= data["wear"]) and np.all(data["wear"] <= data["wear_hi"])
    # a view attaching late gets the whole current window
    plot.source.data = {k: [] for k in plot.source.data}
    plot.model._view_count = 2  # another view
    assert 0 < plot.point_count <= 40
    assert plot.source.data["time"][-1] == pytest.approx(
        twin.state.time.values[-1].astype("datetime64[ns]").astype(np.int64) / 1e6)


def test_scenario_panel_draws_a_fan_with_one_band_per_quantile_pair(recording):
    twin = replay_twin(recording)
    panel = ui.ScenarioPanel(twin, variable="vibration", horizon=600.0, dt=1.0, n=20,
                             limits={"vibration": (None, 0.5)})
    assert panel.band_count == 0

    async def main():
        await feed(twin, parts=4)
        panel.use_current()
        panel.inputs["speed_setpoint"].value = 2400.0
        return await panel.run()

    result = asyncio.run(main())
    assert result is not None, panel.message.value
    assert panel.band_count == 2  # 5 quantiles: 2 bands around the median
    assert "speed_setpoint" in result.coords or "speed_setpoint" in result
    assert panel.progress.value == panel.progress.max
    assert "leaves" in panel.message.value  # 0.5 mm/s is below the pump's vibration
    assert len(panel.chart.children) == 1


def test_scenario_requests_from_the_page_are_checked(recording):
    """Values a page sends (even ones its widgets would not produce) never start a run."""
    twin = replay_twin(recording)
    panel = ui.ScenarioPanel(twin, horizon=600.0, dt=1.0, n=5)

    async def run(**values):
        for name, value in values.items():
            box = panel.inputs.get(name) or getattr(panel, name)
            box.value = value
        return await panel.run()

    async def main():
        await feed(twin, parts=2)
        out = {}
        out["steps"] = await run(horizon=1e9, dt=1.0)
        out["dt"] = await run(horizon=600.0, dt=-1.0)
        out["nan"] = await run(dt=1.0, speed_setpoint=float("nan"))
        return out

    out = asyncio.run(main())
    assert out == {"steps": None, "dt": None, "nan": None}
    assert "speed_setpoint: expected finite numbers" in panel.message.value


def test_panels_follow_the_role(recording, monkeypatch):
    """Viewer: nothing to change; operator: Run and the control panel; engineer: also the
    connection. A viewer's click on Run is refused in the kernel, whatever the page showed."""
    from twinbench import session
    from twinbench.auth import ENV_AUTH

    twin = replay_twin(recording)
    dash = ui.Dashboard(twin, title="Pump 1", plot_variables=["speed"])
    roles = {r: session.Identity("u", r, True) for r in ("viewer", "operator", "engineer")}
    shown = {}
    for role, who in roles.items():
        dash._on_identity(who)
        shown[role] = (dash.control.widget.layout.display != "none",
                       not dash.scenario.run_button.disabled,
                       not dash.connection.connect_button.disabled)
    assert shown == {"viewer": (False, False, False), "operator": (True, True, False),
                     "engineer": (True, True, True)}
    assert "<b>u</b> · engineer view" in dash.header_html.value
    monkeypatch.setenv(ENV_AUTH, "users")  # a signed-in app; this click carries no stamp
    dash.scenario.run_button.click()
    assert "may not run scenarios" in dash.scenario.message.value


def test_rules_panel_engineers_change_conditions_audited(recording, monkeypatch, tmp_path):
    """Only an engineer changes a rule's condition; text is parsed, never evaluated; the
    variable must be the twin's; every attempt is audited under the asker's name."""
    from twinbench import session
    from twinbench.act import Rule, audit_log, guarded_writer
    from twinbench.auth import ENV_AUTH

    monkeypatch.setenv(ENV_AUTH, "users")
    twin = replay_twin(recording, rules=[Rule("high vibration", "vibration > 4.5")])
    # the audit log of an (unconnected) equipment source: rule changes write nothing to it
    equipment = tb.connect("opc.tcp://127.0.0.1:4840/p", {"speed_setpoint": "ns=2;s=P.sp"})
    twin.writer = guarded_writer(equipment, {"speed_setpoint": (0, 3000)},
                                 audit=tmp_path / "audit.jsonl")
    asyncio.run(feed(twin, parts=2))
    panel = ui.RulesPanel(twin)
    eng = session.Identity("erin", "engineer", True)
    op = session.Identity("ana", "operator", True)
    panel.apply_role(op)
    assert panel.conditions["high vibration"].disabled
    results = [panel.apply("high vibration", "vibration > 3.9", identity=op),
               panel.apply("high vibration", "__import__('os').system('x') > 1", identity=eng),
               panel.apply("high vibration", "nonsense > 1", identity=eng),
               panel.apply("no such rule", "vibration > 1", identity=eng),
               panel.apply("high vibration", "vibration >= 3.9", identity=eng)]
    assert [r.result for r in results] == ["refused"] * 4 + ["rule-changed"]
    assert "ana (operator) may not change rules" in results[0].message
    assert "not a variable of this twin" in results[2].message
    assert str(twin.rules[0].condition) == "vibration >= 3.9"
    assert panel.conditions["high vibration"].value == "vibration >= 3.9"
    assert "vibration &gt; 4.5 -&gt; vibration &gt;= 3.9" in panel.message.value  # escaped
    log = audit_log(tmp_path / "audit.jsonl")
    assert [(r["user"], r["tag"], r["result"]) for r in log] == [
        ("ana", "rule:high vibration", "refused"), *[("erin", "rule:high vibration",
                                                      "refused")] * 2,
        ("erin", "rule:no such rule", "refused"), ("erin", "rule:high vibration",
                                                   "rule-changed")]


def test_maintenance_panel_kpis_and_dashboard_starts_once(recording, tmp_path):
    from twinbench.kernel.rul import ParticleFilterRUL
    from twinbench.maintenance import MaintenancePolicy

    pf = ParticleFilterRUL(threshold=4.5, measurement_std=0.05, prior={"b": (0.0, 2e-5)},
                           offset=1.0, horizon=30 * 24 * 3600.0, quantiles=(0.1, 0.5, 0.9),
                           seed=1)
    policy = MaintenancePolicy("vibration", pf, below=48 * 3600.0, quantile=0.1)
    twin = replay_twin(recording, maintenance=[policy])
    kpis = {"output": "flow_rate", "ideal_rate": 110.0, "running": ("speed", 100.0)}
    panel = ui.MaintenancePanel(twin, kpis=kpis)
    dash = ui.Dashboard(twin, title="Pump 1", plot_variables=["speed", "vibration"], kpis=kpis,
                        rate_hz=20.0)
    assert type(dash.widget).__name__ == "AppLayout" and not dash.control.enabled
    dash.plot.model._view_count = 1  # shown in a page (the plot streams only to views)

    async def main():
        await feed(twin, parts=4)
        panel.update()
        before = len(ui_tasks())
        dash.start(twin=False)
        started = len(ui_tasks())
        dash.start(twin=False)  # a re-run cell starts nothing new
        assert len(ui_tasks()) == started and started == before + 4
        await asyncio.sleep(0.2)
        assert dash.plot.point_count > 0
        dash.stop()
        await asyncio.sleep(0)
        assert len(ui_tasks()) == before

    asyncio.run(main())
    assert "oee" in panel.kpi_html.value
    assert "q0.1 [h]" in panel.rul_html.value and "P(failure)" in panel.rul_html.value
    assert panel.figure is not None and len(panel.source.data["vibration"]) > 0
    assert "Pump 1" in dash.header_html.value and "alarm_vibration" in dash.header_html.value
    assert twin.work_orders and "vibration will reach 4.5" in panel.orders_html.value


def test_control_panel_confirms_refuses_and_audits(plant, tmp_path):
    audit = tmp_path / "audit.jsonl"

    async def main():
        src = tb.connect(plant.opcua_url, PUMP_TAGS, publishing_interval=100)
        writer = tb.guarded_writer(src, {"speed_setpoint": tb.Limits(0, 3000)}, audit=audit)
        twin = tb.Twin(tb.models.pump(), src, R=R_PLANT, writer=writer)
        assert not ui.ControlPanel(twin).enabled  # read-only unless the author enables writes
        with pytest.raises(ValueError, match="writable"):
            ui.ControlPanel(twin, ["valve_opening"])
        panel = ui.ControlPanel(twin, ["speed_setpoint"])
        await src.start()
        try:
            before = float((await src.read_values(["speed_setpoint"])).value[0])
            # out of limits: refused before any question, with the reason shown
            refused = await panel.write("speed_setpoint", 5000.0)
            assert refused.result == "refused" and "refused" in panel.result_html.value
            assert not panel.asking
            # Cancel: nothing written
            task = asyncio.ensure_future(panel.write("speed_setpoint", 2000.0))
            await wait_for(lambda: panel.asking)
            assert "2000" in panel.dialog_text.value
            panel.cancel()
            cancelled = await task
            assert cancelled.result == "not-confirmed"
            # Confirm: written and read back from the plant
            target = 2100.0 if abs(before - 2100.0) > 1 else 2200.0
            task = asyncio.ensure_future(panel.write("speed_setpoint", target))
            await wait_for(lambda: panel.asking)
            panel.confirm()
            written = await task
            assert written.ok and written.read_back == pytest.approx(target)
            assert float((await src.read_values(["speed_setpoint"])).value[0]) == \
                pytest.approx(target)
            assert "written" in panel.result_html.value
        finally:
            await src.write("speed_setpoint", before)  # the shared plant is left as found
            await src.stop()
        return panel

    panel = asyncio.run(main())
    results = [r["result"] for r in panel.audit()]
    assert results == ["refused", "not-confirmed", "written"]
    assert "refused" in panel.audit_html.value and "not-confirmed" in panel.audit_html.value


async def wait_for(condition, timeout: float = 5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def test_tag_browser_and_connection_panel_on_the_plant(plant, tmp_path):
    async def main():
        conn = ui.ConnectionPanel(tags={"speed": "ns=2;s=Pump1.speed"})
        conn.url.value = plant.opcua_url
        conn.password.value = "s3cret"
        assert await conn.connect() is None  # a password without a user: refused, said why
        assert conn.password.value == ""  # handed over, then cleared
        assert "username" in conn.message.value and "s3cret" not in conn.message.value
        src = await conn.connect()
        try:
            assert src.status["connected"], conn.message.value
            conn.start()
            conn.start()
            assert "connected" in conn.status_html.value and "s3cret" not in \
                conn.status_html.value
            browser = ui.TagBrowser(src, variables=list(tb.models.pump().output_names))
            tree = await browser.refresh()
            shown = dict(browser.select.options)
            labels = [label.strip("\u2003 ") for label in shown]
            assert {"speed", "vibration", "power"} <= set(labels)
            assert tree.find("Pump1") is not None
            browser.pick(["ns=2;s=Pump1.speed", "ns=2;s=Pump1.vibration",
                          "ns=2;s=Pump1.speed_setpoint"])
            return browser, conn
        finally:
            conn.stop()
            await conn.disconnect()

    browser, _ = asyncio.run(main())
    # speed_setpoint is an input, not offered among the outputs: skipped until chosen
    assert browser.tag_map() == {"speed": "ns=2;s=Pump1.speed",
                                 "vibration": "ns=2;s=Pump1.vibration"}
    path = browser.save(tmp_path / "tags.yaml")
    again = ui.TagBrowser(None, variables=["speed", "vibration"])
    assert again.load(path) == browser.tag_map()
    assert tb.connect(plant.opcua_url, str(path)).tags.names == ("speed", "vibration")


def test_tag_browser_tree_opens_closes_and_filters():
    from twinbench.io.browse import BrowseNode

    tree = BrowseNode("0:Objects", "i=85", "Object", [
        BrowseNode("0:Server", "i=2253", "Object", [BrowseNode("0:State", "i=2259", "Variable")]),
        BrowseNode("2:Pump1", "ns=2;s=Pump1", "Object", [
            BrowseNode("2:speed", "ns=2;s=Pump1.speed", "Variable", [
                BrowseNode("2:EngineeringUnits", "ns=2;i=1", "Variable",
                           info={"property": True})]),
            BrowseNode("2:power", "ns=2;s=Pump1.power", "Variable")])])
    browser = ui.TagBrowser(None, variables=["speed", "power"])
    browser.show(tree)

    def labels():
        return [label.replace("\u2003", " ").strip() for label, _ in browser.select.options]

    # the server's own nodes start closed, the equipment open; properties are not tags
    assert labels() == ["▾ 0:Objects", "▸ 0:Server  (1)", "▾ 2:Pump1", "speed", "power"]
    browser.select.value = ("ns=2;s=Pump1.power",)
    folder = dict(browser.select.options)["\u2003▸ 0:Server  (1)"]
    browser.select.value = ("ns=2;s=Pump1.power", folder)  # a click on the folder row
    assert "State" in labels() and browser.select.value == ("ns=2;s=Pump1.power",)
    browser.toggle("2:Pump1")
    assert "speed" not in labels() and "▸ 2:Pump1  (2)" in labels()
    assert browser.select.value == ()  # hidden rows are not selected
    browser.filter.value = "SPE"
    assert labels() == ["▾ 0:Objects", "▾ 2:Pump1", "speed"]  # matches shown, folders opened
    browser.filter.value = ""
    assert "speed" not in labels()  # the folder closed by hand stays closed
    with pytest.raises(ValueError, match="folder: no folder 'Pump2'"):
        browser.toggle("Pump2")
