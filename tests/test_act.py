"""Rules (persistence, episodes, NaN) and the guarded write path against the simulated plant over
real OPC-UA and MQTT: allowed writes read back and audited; limits, rate, allow-list,
confirmation and dry-run stop a write before it reaches the plant."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import twinbench
from twinbench.act import (
    Condition,
    Event,
    GuardedWriter,
    Limits,
    Rule,
    RuleEngine,
    WriteRequest,
    audit_log,
)

PUMP = {name: f"ns=2;s=Pump1.{name}" for name in ("speed_setpoint", "valve_opening", "speed")}
SPEED = Limits(0, 3600)


# -- conditions and rules ----------------------------------------------------------------------

@pytest.mark.parametrize(("op", "value", "expected"), [
    (">", 7.2, True), (">", 7.1, False), (">=", 7.1, True), ("<", 7.0, True), ("<", 7.1, False),
    ("<=", 7.1, True), ("==", 7.1, True), ("==", 7.0, False), ("!=", 7.0, True),
    ("!=", 7.1, False)])
def test_condition_operators(op, value, expected):
    c = Condition("vibration", op, 7.1)
    assert c.holds(value) is expected
    assert c.holds_array([value]).tolist() == [expected]


@pytest.mark.parametrize("op", [">", ">=", "<", "<=", "==", "!="])
def test_nan_never_satisfies_a_condition(op):
    c = Condition("x", op, 1.0)
    assert not c.holds(math.nan)
    assert not c.holds_array([math.nan, math.nan]).any()


def test_conditions_and_rules_are_data_never_code():
    assert Condition.parse("bearing.vibration >= 7.1") == Condition("bearing.vibration", ">=", 7.1)
    for text in ("__import__('os').system('true') > 1", "x > 1 or True", "x > y", "x ~ 1"):
        with pytest.raises(ValueError, match="text"):
            Condition.parse(text)
    with pytest.raises(ValueError, match="threshold"):
        Condition("x", ">", math.nan)
    with pytest.raises(TypeError, match="threshold"):
        Condition("x", ">", "7")
    rule = Rule("vib", "vibration > 7.1", persistence=30, recommend="reduce speed to 80 %",
                write={"speed_setpoint": 2360.0}, auto=True, cooldown=60)
    data = json.loads(json.dumps(rule.to_dict()))
    assert Rule.from_dict(data).to_dict() == rule.to_dict()
    with pytest.raises(TypeError, match="write"):
        Rule("r", "x > 1", write={"sp": lambda s: 1.0}).to_dict()
    with pytest.raises(ValueError, match="persistence"):
        Rule("r", "x > 1", persistence=-1)
    with pytest.raises(ValueError, match="used twice"):
        RuleEngine([Rule("r", "x > 1"), Rule("r", "x < 1")])


def _kinds(events):
    return [(e.time, e.rule, e.kind) for e in events]


@pytest.mark.parametrize(("persistence", "samples", "expected"), [
    # fires at the first sample where the condition has held for `persistence`
    (2.0, [(0, 8), (1, 8), (2, 8), (3, 8)], [(2.0, "recommendation")]),
    # an interruption restarts the clock
    (2.0, [(0, 8), (1, 8), (2, 5), (3, 8), (4, 8), (5, 8)], [(5.0, "recommendation")]),
    # once per episode; cleared when it ends; re-armed for the next episode
    (0.0, [(0, 8), (1, 9), (2, 5), (3, 5), (4, 8)],
     [(0.0, "recommendation"), (2.0, "cleared"), (4.0, "recommendation")]),
    # a NaN sample is not evidence that the condition holds: it ends the episode
    (1.0, [(0, 8), (1, math.nan), (2, 8), (3, 8)], [(3.0, "recommendation")]),
    (0.0, [(0, 8), (1, math.nan), (2, 8)],
     [(0.0, "recommendation"), (1.0, "cleared"), (2.0, "recommendation")]),
    # sample times, not wall time nor sample counts: a gap in sampling counts as held
    (10.0, [(0, 8), (10, 8)], [(10.0, "recommendation")]),
    (10.0, [(0, 8), (9.5, 8)], []),
])
def test_persistence_and_episodes(persistence, samples, expected):
    rule = Rule("vib", ("vibration", ">", 7.1), persistence=persistence)
    one = RuleEngine([rule])
    got = []
    for t, v in samples:
        got += one.evaluate(float(t), {"vibration": v})
    batch = RuleEngine([rule]).evaluate_batch([float(t) for t, _ in samples],
                                              {"vibration": [v for _, v in samples]})
    want = [(t, "vib", kind) for t, kind in expected]
    assert _kinds(got) == want
    assert _kinds(batch) == want


def test_actions_cooldown_writes_and_datetime_times():
    rules = [Rule("slow", "vibration > 7.1", persistence=30, recommend="reduce speed to 80 %",
                  write={"speed_setpoint": lambda s: 0.8 * s["speed_setpoint"]}, auto=True),
             Rule("flicker", "vibration > 7.1", cooldown=5.0)]
    engine = RuleEngine(rules)
    t0 = np.datetime64("2026-01-01T00:00:00", "ns")
    times = t0 + np.arange(0, 61, 1).astype("timedelta64[s]")
    vib = np.where(np.arange(61) % 2 == 0, 8.0, 7.0)  # flickers every second ...
    vib[20:] = 8.0  # ... then holds from t = 20 s
    events = engine.evaluate_batch(times, {"vibration": vib,
                                           "speed_setpoint": np.full(61, 2950.0)})
    flicker = [e for e in events if e.rule == "flicker" and e.kind != "cleared"]
    # 5 s apart at least; a new episode right after a firing waits for the cooldown
    assert [int((e.time - t0) / np.timedelta64(1, "s")) for e in flicker] == [0, 6, 12, 18, 23]
    slow = [e for e in events if e.rule == "slow"]
    assert len(slow) == 1 and slow[0].kind == "action"
    assert slow[0].time == t0 + np.timedelta64(50, "s")  # 30 s after the episode began
    assert slow[0].writes == {"speed_setpoint": pytest.approx(2360.0)}
    assert "reduce speed to 80 %" in slow[0].message
    assert engine.active() == ["slow", "flicker"]
    with pytest.raises(ValueError, match="backwards"):
        engine.evaluate(times[0], {"vibration": 8.0})


def test_a_missing_variable_leaves_the_rule_as_it_was():
    engine = RuleEngine([Rule("vib", "vibration > 7.1", persistence=2.0)])
    assert engine.evaluate(0.0, {"vibration": 8.0}) == []
    assert engine.evaluate(1.0, {"speed": 1000.0}) == []  # vibration not in this sample
    assert _kinds(engine.evaluate(2.0, {"vibration": 8.0})) == [(2.0, "vib", "recommendation")]
    # aware datetimes work too, and come back as given
    engine = RuleEngine([Rule("vib", "vibration > 7.1", persistence=2.0)])
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert engine.evaluate(t0, {"vibration": 8.0}) == []
    later = t0 + dt.timedelta(seconds=2)
    assert _kinds(engine.evaluate(later, {"vibration": 8.0})) == [(later, "vib", "recommendation")]
    with pytest.raises(ValueError, match="timezone-aware"):
        engine.evaluate(dt.datetime(2026, 1, 2), {"vibration": 8.0})


def _reference(rule, samples):
    """The rule semantics written sample by sample, as plainly as possible."""
    start, fired, last, out = None, False, -math.inf, []
    for i, (t, v) in enumerate(samples):
        if rule.condition.holds(v):
            if start is None:
                start, fired = t, False
            if not fired and t >= max(start + rule.persistence, last + rule.cooldown):
                fired, last = True, t
                out.append((i, "recommendation"))
        elif start is not None:
            if fired:
                out.append((i, "cleared"))
            start, fired = None, False
    return out


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 3),
                                st.one_of(st.sampled_from([0.0, 5.0, 9.0]), st.just(math.nan))),
                      min_size=1, max_size=40),
       persistence=st.integers(0, 6), cooldown=st.integers(0, 8),
       cuts=st.lists(st.integers(1, 39), max_size=4))
def test_batches_equal_samples_equal_the_reference(steps, persistence, cooldown, cuts):
    times = np.cumsum([dt for dt, _ in steps]).astype(float)
    values = np.array([v for _, v in steps])
    rule = Rule("r", "x > 7", persistence=persistence, cooldown=cooldown)
    want = [(float(times[i]), kind) for i, kind in _reference(rule, list(zip(times, values)))]
    one = RuleEngine([rule])
    per_sample = [e for t, v in zip(times, values) for e in one.evaluate(t, {"x": v})]
    chunked = RuleEngine([rule])
    bounds = [0, *sorted(c for c in set(cuts) if c < len(times)), len(times)]
    per_batch = [e for a, b in itertools.pairwise(bounds)
                 for e in chunked.evaluate_batch(times[a:b], {"x": values[a:b]})]
    assert [(e.time, e.kind) for e in per_sample] == want
    assert [(e.time, e.kind) for e in per_batch] == want


# -- the guarded write path over OPC-UA -------------------------------------------------------

async def _setpoint(src):
    return float((await src.read_values(["speed_setpoint"])).value[0])


def test_guarded_writes_over_opcua(fast_plant, tmp_path):
    audit = tmp_path / "audit.jsonl"
    asked: list[WriteRequest] = []

    async def yes(request):
        asked.append(request)
        return True

    async def main():
        async with twinbench.connect(fast_plant.opcua_url, PUMP, publishing_interval=100) as src:
            before = await _setpoint(src)
            writer = GuardedWriter(src, {"speed_setpoint": SPEED,
                                         "valve_opening": Limits(0.2, 1.0)},
                                   audit=audit, confirm=yes, user="tester")
            try:
                ok = await writer.write("speed_setpoint", 2500, reason="test: slow down")
                after_ok = await _setpoint(src)
                high = await writer.write("speed_setpoint", 5000.0, reason="test: too fast")
                low = await writer.write("valve_opening", 0.1, reason="test: too closed")
                nan = await writer.write("speed_setpoint", math.nan, reason="test: nan")
                listed = await writer.write("speed", 100.0, reason="test: not writable")
                untouched = await _setpoint(src)
                status = src.status
            finally:
                restored = await writer.write("speed_setpoint", before, reason="test: restore")
            return before, ok, after_ok, high, low, nan, listed, untouched, status, restored

    before, ok, after_ok, high, low, nan, listed, untouched, status, restored = asyncio.run(main())
    assert ok.result == "written" and ok.ok and ok.read_back == 2500.0 and ok.old == before
    assert after_ok == 2500.0  # the plant holds it
    assert asked[0].tag == "speed_setpoint" and asked[0].requested == 2500.0
    assert asked[0].old == before and "test: slow down" in asked[0].describe()
    assert high.result == "refused" and "above the high limit 3600" in high.message
    assert low.result == "refused" and "below the low limit 0.2" in low.message
    assert nan.result == "refused" and "finite number" in nan.message
    assert listed.result == "refused" and "not on the allow-list" in listed.message
    assert untouched == 2500.0  # refused writes never reached the plant ...
    assert status["writes"] == 1 and status["write_errors"] == 0  # ... nor the source
    # refused writes never asked for confirmation: only the first write and the restore did
    assert [r.reason for r in asked] == ["test: slow down", "test: restore"]
    assert restored.result == "written" and restored.read_back == before

    log = audit_log(audit)
    assert [r["result"] for r in log] == ["written", "refused", "refused", "refused", "refused",
                                          "written"]
    first = log[0]
    assert {k: first[k] for k in ("user", "tag", "old", "requested", "read_back", "source",
                                  "reason")} == {
        "user": "tester", "tag": "speed_setpoint", "old": before, "requested": 2500,
        "read_back": 2500.0, "source": "user", "reason": "test: slow down"}
    assert first["time"].endswith("+00:00")
    assert log[1]["requested"] == 5000.0 and log[1]["read_back"] is None
    assert log[3]["requested"] == "nan"


def test_rate_confirmation_dry_run_and_equipment_refusal(fast_plant, tmp_path):
    audit = tmp_path / "audit.jsonl"

    async def main():
        async with twinbench.connect(fast_plant.opcua_url, PUMP, publishing_interval=100) as src:
            before = await _setpoint(src)
            limits = {"speed_setpoint": Limits(0, 5000, max_rate=100.0)}  # wider than the plant's
            writer = GuardedWriter(src, limits, audit=audit, user="tester")
            out = {}
            try:
                # a first step is counted as made in 1 s: 50 rpm fits 100 rpm/s, 500 does not
                out["step"] = await writer.write("speed_setpoint", before - 500, reason="step",
                                                 confirm=True)
                out["small"] = await writer.write("speed_setpoint", before - 50, reason="small",
                                                  confirm=True)
                out["fast"] = await writer.write("speed_setpoint", before - 450, reason="fast",
                                                 confirm=True)
                plain = GuardedWriter(src, {"speed_setpoint": SPEED}, audit=audit, user="tester")
                out["unconfirmed"] = await plain.write("speed_setpoint", before - 60,
                                                        reason="no dialog")
                out["declined"] = await plain.write("speed_setpoint", before - 60,
                                                     reason="declined", confirm=lambda r: False)
                out["broken"] = await plain.write("speed_setpoint", before - 60, reason="broken",
                                                   confirm=lambda r: 1 / 0)
                never = asyncio.Event()

                async def dialog(request):  # nobody answers
                    await never.wait()

                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(plain.write("speed_setpoint", before - 60,
                                                       reason="walked away", confirm=dialog), 0.2)
                dry = GuardedWriter(src, {"speed_setpoint": SPEED}, audit=audit, dry_run=True,
                                    user="tester")
                out["dry"] = await dry.write("speed_setpoint", before - 100, reason="dry",
                                             confirm=True)
                out["dry-too-high"] = await dry.write("speed_setpoint", 5001, reason="dry",
                                                      confirm=True)
                out["value"] = await _setpoint(src)
                # within our limits, outside the plant's: the plant refuses; explained, no retry
                wide = GuardedWriter(src, {"speed_setpoint": Limits(0, 5000)}, audit=audit,
                                     user="tester")
                errors = src.status["write_errors"]
                out["plant-refuses"] = await wide.write("speed_setpoint", 4000, reason="too high",
                                                        confirm=True)
                out["errors"] = src.status["write_errors"] - errors
            finally:
                out["restore"] = await GuardedWriter(src, {"speed_setpoint": SPEED}, audit=audit,
                                                     user="tester").write(
                    "speed_setpoint", before, reason="restore", confirm=True)
            return before, out

    before, out = asyncio.run(main())
    assert out["step"].result == "refused"
    assert "max_rate 100/s" in out["step"].message and "500/s" in out["step"].message
    assert out["small"].result == "written" and out["small"].read_back == before - 50
    # 400 rpm within moments of the last write: far above 100 rpm/s
    assert out["fast"].result == "refused" and "since the last write" in out["fast"].message
    assert out["unconfirmed"].result == "not-confirmed"
    assert "no confirmation" in out["unconfirmed"].message
    assert out["declined"].result == "not-confirmed" and "False" in out["declined"].message
    assert out["broken"].result == "not-confirmed" and "ZeroDivisionError" in out["broken"].message
    assert out["dry"].result == "dry-run" and out["dry"].read_back is None
    assert out["dry-too-high"].result == "refused"  # a dry run still shows what limits refuse
    assert out["value"] == before - 50  # none of those reached the plant
    assert out["plant-refuses"].result == "failed"
    assert "BadOutOfRange" in out["plant-refuses"].message
    assert out["errors"] == 1  # one attempt, not retried
    assert out["restore"].result == "written"
    log = audit_log(audit)
    assert [r["result"] for r in log] == [
        "refused", "written", "refused", "not-confirmed", "not-confirmed", "not-confirmed",
        "failed", "dry-run", "refused", "failed", "written"]
    assert log[6]["reason"] == "walked away" and "cancelled" in log[6]["message"]
    assert log[7]["dry_run"] is True and log[7]["read_back"] is None


def test_rule_events_through_the_writer_and_write_sync(fast_plant, tmp_path):
    audit = tmp_path / "audit.jsonl"
    src = twinbench.connect(fast_plant.opcua_url, PUMP, publishing_interval=100)
    writer = GuardedWriter(src, {"speed_setpoint": SPEED}, audit=audit, user="tester")
    with pytest.raises(RuntimeError, match="start_sync"):
        writer.write_sync("speed_setpoint", 2000.0, reason="before start", confirm=True)
    src.start_sync()
    try:
        before = float(src.read_values_sync(["speed_setpoint"]).value[0])
        auto = RuleEngine([Rule("vib", "vibration > 7.1", write={"speed_setpoint": 2400.0},
                                auto=True)])
        proposal = RuleEngine([Rule("vib-ask", "vibration > 7.1",
                                    write={"speed_setpoint": 2300.0})])
        action = auto.evaluate(0.0, {"vibration": 9.0})[0]
        recommendation = proposal.evaluate(0.0, {"vibration": 9.0})[0]
        run = src._sync.run  # the source's own loop, as write_sync uses
        acted = run(writer.apply(action), 10)
        asked = run(writer.apply(recommendation), 10)  # no confirmation: not written
        value = float(src.read_values_sync(["speed_setpoint"]).value[0])
        synced = writer.write_sync("speed_setpoint", before, reason="restore", confirm=True)
    finally:
        src.stop_sync()
    assert action.kind == "action" and recommendation.kind == "recommendation"
    assert [r.result for r in acted] == ["written"] and value == 2400.0
    assert [r.result for r in asked] == ["not-confirmed"]
    assert synced.result == "written" and synced.read_back == before
    log = audit_log(audit)
    assert [(r["source"], r["result"]) for r in log] == [
        ("rule:vib", "written"), ("rule:vib-ask", "not-confirmed"), ("user", "written")]
    assert "vibration > 7.1" in log[0]["reason"]
    with pytest.raises(TypeError, match="event"):
        asyncio.run(writer.apply({"rule": "vib"}))
    assert isinstance(action, Event)


# -- over MQTT: the acknowledgement is the read-back ---------------------------------------------

def test_guarded_writes_over_mqtt(plant, tmp_path):
    if plant.mqtt_url is None:
        pytest.skip("mosquitto not installed: the shared plant runs without MQTT")
    audit = tmp_path / "audit.jsonl"
    topics = plant.topics["pump1"]
    assert topics["command"] == "plant/pump1/command" and topics["ack"] == "plant/pump1/ack"

    async def main():
        async with twinbench.connect(plant.opcua_url, PUMP) as ua, \
                twinbench.connect(plant.mqtt_url, {"speed": f"{topics['telemetry']}#speed"},
                                  command_topic=topics["command"],
                                  ack_topic=topics["ack"]) as mq:
            before = await _setpoint(ua)
            writer = GuardedWriter(mq, {"speed_setpoint": Limits(0, 5000, max_rate=1000.0),
                                        "valve_opening": Limits(0, 1)},
                                   audit=audit, confirm=lambda r: True, user="tester")
            out = {}
            try:
                # the setpoint is not telemetered: no current value to measure a rate from
                out["no-rate-ref"] = await writer.write("speed_setpoint", 2800.0, reason="rate")
                unlimited = GuardedWriter(mq, {"speed_setpoint": Limits(0, 5000)}, audit=audit,
                                          confirm=lambda r: True, user="tester")
                out["ok"] = await unlimited.write("speed_setpoint", 2800.0, reason="mqtt write")
                out["plant"] = await _setpoint(ua)
                out["plant-refuses"] = await unlimited.write("speed_setpoint", 4000.0,
                                                             reason="too high")
                out["high"] = await writer.write("valve_opening", 1.5, reason="too open")
                out["plant-after"] = await _setpoint(ua)
            finally:
                await ua.write("speed_setpoint", before)
                out["restored"] = await _setpoint(ua)
            return before, out

    before, out = asyncio.run(main())
    assert out["restored"] == before
    assert out["no-rate-ref"].result == "refused" and "max_rate" in out["no-rate-ref"].message
    assert out["ok"].result == "written" and out["ok"].read_back == 2800.0
    assert "acknowledged" in out["ok"].message
    assert out["plant"] == 2800.0  # the plant follows the command
    assert out["plant-refuses"].result == "failed"
    assert "outside 0..3600" in out["plant-refuses"].message
    assert out["high"].result == "refused"
    assert out["plant-after"] == 2800.0
    assert [r["result"] for r in audit_log(audit)] == ["refused", "written", "failed", "refused"]


def test_writer_arguments_are_checked(tmp_path):
    src = twinbench.connect("opc.tcp://127.0.0.1:4840/twinbench/plant", PUMP)
    audit = tmp_path / "a" / "audit.jsonl"
    with pytest.raises(TypeError, match="allow"):
        GuardedWriter(src, {"speed_setpoint": 3600}, audit=audit)
    with pytest.raises(ValueError, match="high"):
        GuardedWriter(src, {"speed_setpoint": (10, 0)}, audit=audit)
    with pytest.raises(ValueError, match="max_rate"):
        Limits(0, 1, max_rate=0)
    mq = twinbench.connect("mqtt://127.0.0.1:1883", {"speed": "plant/pump1/telemetry#speed"},
                           command_topic="plant/pump1/command")
    with pytest.raises(ValueError, match="ack_topic"):
        GuardedWriter(mq, {"speed_setpoint": SPEED}, audit=audit)
    writer = GuardedWriter(src, {"speed_setpoint": (0, 3600)}, audit=audit)
    assert audit.exists()  # created up front: a log that cannot be written fails here
    with pytest.raises(ValueError, match="reason"):
        asyncio.run(writer.write("speed_setpoint", 1.0, reason=" "))
    with pytest.raises(ValueError, match="source"):
        asyncio.run(writer.write("speed_setpoint", 1.0, reason="x", source="rule:"))
    audit.write_text('{"result": "written"}\nnot json\n{"result": "refused"}\n')
    with pytest.raises(ValueError, match="line 2"):
        audit_log(audit)
