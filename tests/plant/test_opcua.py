"""The plant's OPC-UA server, through a plain asyncua client over a real socket."""

from __future__ import annotations

import asyncio

import pytest

asyncua = pytest.importorskip("asyncua")
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaStatusCodeError

PUMP_OUTPUTS = ["speed", "flow_rate", "total_head", "pressure", "motor_temperature", "vibration",
                "current", "power"]


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def dv(value, vt=ua.VariantType.Double):
    return ua.DataValue(ua.Variant(value, vt))


async def write_status(node, value, vt=ua.VariantType.Double) -> str:
    try:
        await node.write_value(dv(value, vt))
    except UaStatusCodeError as exc:
        return type(exc).__name__
    return "Good"


def test_address_space_values_change_and_timestamps_advance(plant, async_wait_until):
    async def main():
        async with Client(plant.opcua_url, timeout=10) as client:
            assert await client.get_namespace_index("urn:twinbench:plant") == 2
            nodes = [client.get_node(f"ns=2;s=Pump1.{name}") for name in PUMP_OUTPUTS]
            first = [await n.read_data_value() for n in nodes]
            seq = client.get_node("ns=2;s=Pump1.sequence")
            s0 = await seq.read_value()

            async def moved():
                return await seq.read_value() >= s0 + 3

            await async_wait_until(moved, 5, "three ticks")
            second = [await n.read_data_value() for n in nodes]
            for a, b, name in zip(first, second, PUMP_OUTPUTS):
                assert a.StatusCode.is_good(), name
                assert a.Value.VariantType == ua.VariantType.Double
                assert b.SourceTimestamp > a.SourceTimestamp, name
                assert b.Value.Value != a.Value.Value, name  # noise
            speed = second[0].Value.Value
            assert 2800 < speed < 3000
            units = await client.get_node("ns=2;s=Pump1.speed").get_child(
                "2:EngineeringUnits")
            assert (await units.read_value()).DisplayName.Text == "rpm"
            wear = await client.get_node("ns=2;s=Pump1.true_wear").read_value()
            assert 0 <= wear < 1e-3
            assert await client.get_node("ns=2;s=Pump1.fault").read_value() == ""
            # the wind turbine, with its writable input
            gen = await client.get_node("ns=2;s=Wind1.generator_speed").read_value()
            assert 800 < gen < 1100
            ws = client.get_node("ns=2;s=Wind1.wind_speed")
            assert await write_status(ws, 50.0) == "BadOutOfRange"
            assert await write_status(ws, 8.0) == "Good"

    run(main())


def test_setpoint_write_moves_speed(fast_plant, async_wait_until):
    async def main():
        async with Client(fast_plant.opcua_url, timeout=10) as client:
            sp = client.get_node("ns=2;s=Pump1.speed_setpoint")
            speed = client.get_node("ns=2;s=Pump1.speed")
            await sp.write_value(dv(2000.0))
            assert await sp.read_value() == 2000.0

            async def near():
                return abs(await speed.read_value() - 1985) < 40

            await async_wait_until(near, 10, "speed near the 2000 rpm setpoint")
            # run = false ramps the pump down to standstill; true brings it back
            run_node = client.get_node("ns=2;s=Pump1.run")
            await run_node.write_value(dv(False, ua.VariantType.Boolean))

            async def stopped():
                return await speed.read_value() < 50

            await async_wait_until(stopped, 10, "the pump to stop")
            await run_node.write_value(dv(True, ua.VariantType.Boolean))

            async def running():
                return await speed.read_value() > 1900

            await async_wait_until(running, 10, "the pump to run again")
            await sp.write_value(dv(2950.0))

    run(main())


def test_bad_writes_are_rejected_and_change_nothing(plant):
    async def main():
        async with Client(plant.opcua_url, timeout=10) as client:
            sp = client.get_node("ns=2;s=Pump1.speed_setpoint")
            valve = client.get_node("ns=2;s=Pump1.valve_opening")
            before = await sp.read_value()
            assert await write_status(sp, 5000.0) == "BadOutOfRange"
            assert await write_status(sp, -1.0) == "BadOutOfRange"
            assert await write_status(sp, float("nan")) == "BadOutOfRange"
            assert await write_status(valve, 1.5) == "BadOutOfRange"
            assert await sp.read_value() == before
            assert await valve.read_value() == 0.5
            # wrong variant type: asyncua's own check
            assert await write_status(sp, 2000, ua.VariantType.Int32) == "BadTypeMismatch"
            assert await write_status(client.get_node("ns=2;s=Pump1.run"), 1.0) \
                == "BadTypeMismatch"
            # measurements, the sequence and the truth are read-only
            for name in ("speed", "sequence", "true_wear"):
                node = client.get_node(f"ns=2;s=Pump1.{name}")
                vt = ua.VariantType.UInt64 if name == "sequence" else ua.VariantType.Double
                assert await write_status(node, 1 if name == "sequence" else 1.0, vt) \
                    == "BadUserAccessDenied", name
            fault = client.get_node("ns=2;s=Pump1.fault")
            assert await write_status(fault, "bogus", ua.VariantType.String) \
                == "BadInvalidArgument"
            assert await write_status(fault, "stuck:nosuchtag", ua.VariantType.String) \
                == "BadInvalidArgument"
            assert await fault.read_value() == ""

    run(main())


def test_faults_at_run_time(plant, async_wait_until):
    async def main():
        async with Client(plant.opcua_url, timeout=10) as client:
            fault = client.get_node("ns=2;s=Pump1.fault")
            seq = client.get_node("ns=2;s=Pump1.sequence")
            pressure = client.get_node("ns=2;s=Pump1.pressure")
            flow = client.get_node("ns=2;s=Pump1.flow_rate")
            wear = client.get_node("ns=2;s=Pump1.true_wear")

            async def ticks(n):
                s0 = await seq.read_value()

                async def done():
                    return await seq.read_value() >= s0 + n
                await async_wait_until(done, 5, f"{n} ticks")

            try:
                # no fault: the bearing barely wears
                w0 = await wear.read_value()
                await ticks(10)
                healthy = await wear.read_value() - w0
                await fault.write_value(dv(" stuck:pressure , dropout:flow_rate,bearing_wear:1000",
                                           ua.VariantType.String))
                assert await fault.read_value() == \
                    "stuck:pressure,dropout:flow_rate,bearing_wear:1000"
                await ticks(2)
                p1 = await pressure.read_data_value()
                w1 = await wear.read_value()
                await ticks(10)
                p2 = await pressure.read_data_value()
                assert p2.Value.Value == p1.Value.Value  # stuck
                assert p2.SourceTimestamp > p1.SourceTimestamp
                f = await flow.read_data_value(raise_on_bad_status=False)
                assert f.StatusCode.value == ua.StatusCodes.BadNoCommunication
                faulty = await wear.read_value() - w1
                assert faulty > 100 * max(healthy, 1e-12)
                # comm_loss for half a second: everything Bad, then back by itself
                await fault.write_value(dv("comm_loss:0.5", ua.VariantType.String))
                await ticks(1)
                s = await client.get_node("ns=2;s=Pump1.speed").read_data_value(
                    raise_on_bad_status=False)
                assert s.StatusCode.value == ua.StatusCodes.BadCommunicationError

                async def cleared():
                    return await fault.read_value() == ""
                await async_wait_until(cleared, 5, "comm_loss to end")
                await ticks(1)
                assert (await client.get_node("ns=2;s=Pump1.speed").read_data_value()
                        ).StatusCode.is_good()
                # drift: a large rate shows within a second
                base = await client.get_node("ns=2;s=Pump1.current").read_value()
                await fault.write_value(dv("drift:current:36000", ua.VariantType.String))
                await ticks(10)  # >= 0.5 s: +5 A
                drifted = await client.get_node("ns=2;s=Pump1.current").read_value()
                assert drifted - base > 3
            finally:
                await fault.write_value(dv("", ua.VariantType.String))
            await ticks(1)
            assert (await flow.read_data_value()).StatusCode.is_good()

    run(main())


def test_bench_tags_update(plant, async_wait_until):
    async def main():
        async with Client(plant.opcua_url, timeout=10) as client:
            nodes = [client.get_node(f"ns=2;s=Bench.Tag{i:04d}") for i in (0, 25, 49)]
            assert await client.get_node("ns=2;s=Bench.Tag0049").read_browse_name()
            first = [await n.read_data_value() for n in nodes]

            async def changed():
                now = [await n.read_data_value() for n in nodes]
                return all(b.Value.Value != a.Value.Value and b.SourceTimestamp > a.SourceTimestamp
                           for a, b in zip(first, now))

            await async_wait_until(changed, 5, "bench tags to change")
            with pytest.raises(UaStatusCodeError):
                await client.get_node("ns=2;s=Bench.Tag0050").read_value()

    run(main())


def test_speedup_advances_simulated_time(fast_plant, plant):
    async def span(url):
        async with Client(url, timeout=10) as client:
            node = client.get_node("ns=2;s=Pump1.speed")
            a = await node.read_data_value()
            t0 = asyncio.get_running_loop().time()
            await asyncio.sleep(0.5)
            b = await node.read_data_value()
            wall = asyncio.get_running_loop().time() - t0
            return (b.SourceTimestamp - a.SourceTimestamp).total_seconds(), wall

    sim, wall = run(span(fast_plant.opcua_url))
    assert 60 * (wall - 0.25) < sim < 60 * (wall + 0.25)
    sim1, wall1 = run(span(plant.opcua_url))
    assert wall1 - 0.2 < sim1 < wall1 + 0.2


def test_subscription_delivers_changes(plant, async_wait_until):
    """A plain asyncua subscription: every subscribed tag notifies again and again (the plant's
    shared DataValues survive asyncua's per-item copy)."""
    async def main():
        seen: dict[str, list] = {}

        class Handler:
            def datachange_notification(self, node, value, data):
                seen.setdefault(node.nodeid.Identifier, []).append(
                    data.monitored_item.Value.SourceTimestamp)

        names = ["Pump1.speed", "Pump1.sequence", "Wind1.power", "Bench.Tag0000",
                 "Bench.Tag0049"]
        async with Client(plant.opcua_url, timeout=10) as client:
            sub = await client.create_subscription(50, Handler())
            await sub.subscribe_data_change([client.get_node(f"ns=2;s={n}") for n in names])

            async def enough():
                return all(len(seen.get(n, ())) >= 4 for n in names)

            await async_wait_until(enough, 10, "4 notifications of every subscribed tag")
            await sub.delete()
        for n in names:
            stamps = seen[n]
            assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps), n

    run(main())
