"""Who is asking, in the kernel: the server's stamp, the role check of the write path."""

from __future__ import annotations

import asyncio

import pytest

import twinbench
from twinbench import session
from twinbench.act import GuardedWriter, Limits, audit_log
from twinbench.auth import ENV_AUTH, ROLE_HEADER

PUMP = {"speed_setpoint": "ns=2;s=Pump1.speed_setpoint"}


def test_without_sign_in_the_local_account_may_do_everything(monkeypatch):
    monkeypatch.delenv(ENV_AUTH, raising=False)
    who = session.request_identity()
    assert not session.auth_required() and not who.signed_in
    assert all(who.may(a) for a in ("write", "scenario", "configure"))
    seen = []
    session.watch(seen.append)()
    assert seen == [who]


def test_the_stamp_gives_the_identity_and_nothing_else_does(monkeypatch):
    monkeypatch.setenv(ENV_AUTH, "users")
    assert session.auth_required()
    ana = session.identity_of({"username": "ana", ROLE_HEADER: "operator"})
    assert ana == session.Identity("ana", "operator", True) and str(ana) == "ana (operator)"
    assert ana.may("write") and ana.may("scenario") and not ana.may("configure")
    viewer = session.identity_of({"username": "vic", ROLE_HEADER: "viewer"})
    assert not any(viewer.may(a) for a in ("write", "scenario", "configure"))
    # a role the server never gives, or none at all, may do nothing
    for header in ({"username": "eve", ROLE_HEADER: "admin"}, {"username": "eve"}, None, "x"):
        assert session.identity_of(header).role is None
        assert not session.identity_of(header).may("write")
    # outside a kernel there is no message, so no identity: nothing is allowed
    assert session.request_identity().role is None


def test_the_write_path_checks_the_role_in_the_kernel(fast_plant, tmp_path, monkeypatch):
    """With sign-in on, a viewer's write is refused before any confirmation and audited under
    the viewer's name; an operator's goes through and is audited under theirs."""
    monkeypatch.setenv(ENV_AUTH, "users")
    audit = tmp_path / "audit.jsonl"
    asked = []
    viewer = session.Identity("vic", "viewer", True)
    operator = session.Identity("ana", "operator", True)

    async def main():
        async with twinbench.connect(fast_plant.opcua_url, PUMP, publishing_interval=100) as src:
            writer = GuardedWriter(src, {"speed_setpoint": Limits(0, 3600)}, audit=audit,
                                   confirm=lambda r: asked.append(r) or True, user="kernel")
            before = float((await src.read_values(["speed_setpoint"])).value[0])
            refused = await writer.write("speed_setpoint", 2400, reason="test", identity=viewer)
            nobody = await writer.write("speed_setpoint", 2400, reason="test")  # no stamp
            after_refusals = float((await src.read_values(["speed_setpoint"])).value[0])
            ok = await writer.write("speed_setpoint", 2400, reason="test", identity=operator)
            await writer.write("speed_setpoint", before, reason="restore", identity=operator)
            return before, refused, nobody, after_refusals, ok

    before, refused, nobody, after_refusals, ok = asyncio.run(main())
    assert refused.result == "refused" and "vic (viewer) may not write" in refused.message
    assert nobody.result == "refused" and "unknown (no role)" in nobody.message
    assert after_refusals == before  # nothing reached the plant
    assert ok.result == "written" and ok.user == "ana"
    assert [r.user for r in asked] == ["ana", "ana"]  # refusals never asked for confirmation
    log = audit_log(audit)
    assert [(r["user"], r["result"]) for r in log] == [
        ("vic", "refused"), ("unknown", "refused"), ("ana", "written"), ("ana", "written")]


def test_identity_argument_is_checked(fast_plant, tmp_path):
    async def main():
        async with twinbench.connect(fast_plant.opcua_url, PUMP, publishing_interval=100) as src:
            writer = GuardedWriter(src, {"speed_setpoint": Limits(0, 3600)},
                                   audit=tmp_path / "a.jsonl")
            with pytest.raises(TypeError, match="identity: expected"):
                await writer.write("speed_setpoint", 1, reason="x", identity="ana")

    asyncio.run(main())


def test_limits_change_only_by_engineers_within_the_apps_bounds(fast_plant, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv(ENV_AUTH, "users")
    audit = tmp_path / "audit.jsonl"
    eng = session.Identity("erin", "engineer", True)
    op = session.Identity("ana", "operator", True)

    async def main():
        async with twinbench.connect(fast_plant.opcua_url, PUMP, publishing_interval=100) as src:
            writer = GuardedWriter(src, {"speed_setpoint": Limits(0, 3600)}, audit=audit)
            results = [writer.set_limits("speed_setpoint", 1000, 3000, reason="r", identity=op),
                       writer.set_limits("speed_setpoint", 1000, 3000, reason="r", identity=eng),
                       writer.set_limits("speed_setpoint", 1000, 5000, reason="r", identity=eng),
                       writer.set_limits("speed_setpoint", 3000, 1000, reason="r", identity=eng)]
            # the narrowed range now refuses what the app's bounds allowed
            high = await writer.write("speed_setpoint", 3300, reason="r", identity=op)
            return results, high, writer.allow["speed_setpoint"]

    results, high, now = asyncio.run(main())
    assert [r.result for r in results] == ["refused", "limits-changed", "refused", "refused"]
    assert "ana (operator) may not change limits" in results[0].message
    assert "leaves the app's bounds 0..3600" in results[2].message
    assert (now.low, now.high) == (1000.0, 3000.0)
    assert high.result == "refused" and "above the high limit 3000" in high.message
    assert [(r["user"], r["result"]) for r in audit_log(audit)] == [
        ("ana", "refused"), ("erin", "limits-changed"), ("erin", "refused"),
        ("erin", "refused"), ("ana", "refused")]
