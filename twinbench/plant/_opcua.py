"""The plant's OPC-UA server (asyncua): address space, checked writes, security, users.

Writes from clients go through :class:`_CheckedAttributeService`, which wraps asyncua's own
attribute service: a setpoint out of range is answered ``BadOutOfRange`` (a bad fault spec
``BadInvalidArgument``) before asyncua stores anything, so the value does not change; a wrong
variant type is left to asyncua (``BadTypeMismatch``), and a measurement is not writable
(``BadUserAccessDenied``, or ``BadNotWritable`` for an admin session).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twinbench.plant._sim import AssetSim, Reading

__all__ = [
    "ENDPOINT_PATH",
    "NAMESPACE_URI",
    "SECURITY_MODES",
    "PlantServer",
    "default_state_dir",
    "free_port",
]

_logger = logging.getLogger("twinbench.plant")

NAMESPACE_URI = "urn:twinbench:plant"
ENDPOINT_PATH = "/twinbench/plant"
APPLICATION_URI = "urn:twinbench:plant:server"
SECURITY_MODES = ("none", "sign", "encrypt")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (bind to port 0, close)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def default_state_dir() -> Path:
    """Where the plant keeps its certificate: ``$XDG_DATA_HOME/twinbench/plant`` or
    ``~/.local/share/twinbench/plant``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return Path(base) / "twinbench" / "plant"


_SHARED_DV: Any = None


def _shared_datavalue() -> Any:
    """A ``ua.DataValue`` subclass whose deep copy is itself.

    asyncua deep-copies every new value once per monitored item (to keep it from later
    mutation); with 1000 subscribed tags that copy was about three quarters of the server's CPU.
    The plant makes a fresh DataValue of immutable parts (a float or string, datetimes, a status)
    for every write and never changes it afterwards, so sharing it is safe.
    """
    global _SHARED_DV
    if _SHARED_DV is None:
        from asyncua import ua

        class SharedDataValue(ua.DataValue):
            __slots__ = ()

            def __deepcopy__(self, memo: dict) -> SharedDataValue:
                return self

        _SHARED_DV = SharedDataValue
    return _SHARED_DV


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC)


class _Users:
    """asyncua user manager: only the given username/password pairs; anonymous refused."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = dict(users)

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> Any:
        import hmac

        from asyncua.crypto.permission_rules import User, UserRole

        if username is None or username not in self._users:
            return None
        given = password.encode() if isinstance(password, str) else (password or b"")
        if not hmac.compare_digest(given, self._users[username].encode()):
            _logger.info("opc-ua: wrong password for user %r", username)
            return None
        return User(role=UserRole.User, name=username)


def _checked_attribute_service(base: Any, checks: dict, readonly: set,
                               clock: Callable[[], datetime | None]) -> Any:
    """An AttributeService whose writes first pass the plant's range checks, and whose accepted
    setpoints carry the plant's simulated time (`clock`) as their SourceTimestamp, like its
    measurements: with a speedup, wall-clock stamps would lie in the simulated past."""
    from asyncua import ua
    from asyncua.crypto.permission_rules import UserRole
    from asyncua.server.address_space import AttributeService

    class _CheckedAttributeService(AttributeService):
        async def write(self, params: Any, user: Any = None) -> list:
            if user is None:
                return await base.write(params)
            results = []
            for wv in params.NodesToWrite:
                status = None
                if wv.AttributeId == ua.AttributeIds.Value:
                    if wv.NodeId in readonly and user.role == UserRole.Admin:
                        status = ua.StatusCode(ua.StatusCodes.BadNotWritable)
                    elif wv.NodeId in checks and user.role != UserRole.Anonymous:
                        variant_type, check, apply = checks[wv.NodeId]
                        variant = wv.Value.Value if wv.Value is not None else None
                        if variant is not None and variant.VariantType == variant_type:
                            try:
                                value = check(variant.Value)
                            except ValueError as exc:
                                code = (ua.StatusCodes.BadInvalidArgument
                                        if variant_type == ua.VariantType.String
                                        else ua.StatusCodes.BadOutOfRange)
                                _logger.info("opc-ua: write rejected: %s", exc)
                                status = ua.StatusCode(code)
                            else:
                                stamp = clock()
                                if stamp is not None:
                                    wv.Value.SourceTimestamp = stamp
                                one = ua.WriteParameters(NodesToWrite=[wv])
                                status = (await base.write(one, user=user))[0]
                                if status.is_good():
                                    await apply(value)
                if status is None:
                    one = ua.WriteParameters(NodesToWrite=[wv])
                    status = (await base.write(one, user=user))[0]
                results.append(status)
            return results

    service = _CheckedAttributeService(base._aspace)
    return service


class PlantServer:
    """The OPC-UA side of the plant. Build with :meth:`start`, feed with :meth:`publish`."""

    def __init__(self, assets: list[AssetSim], *, host: str, port: int, security: tuple[str, ...],
                 users: Mapping[str, str] | None, state_dir: Path | None, bench_tags: int,
                 on_write: Callable[[AssetSim, str, Any], Any]) -> None:
        self.assets = assets
        self._last_sim_time: float | None = None
        self.host = host
        self.port = port
        self.security = security
        self.users = users
        self.state_dir = state_dir
        self.bench_tags = bench_tags
        self.on_write = on_write
        self.url = f"opc.tcp://{host}:{port}{ENDPOINT_PATH}"
        self.server: Any = None
        self.ns = 2
        self._nodes: dict[str, dict[str, Any]] = {}  # asset name -> tag -> NodeId
        self.bench_nodes: list[Any] = []

    async def start(self) -> None:
        from asyncua import Server, ua

        server = Server(user_manager=_Users(self.users) if self.users else None)
        await server.init()
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}{ENDPOINT_PATH}")
        server.set_server_name("twinbench simulated plant")
        await server.set_application_uri(APPLICATION_URI)
        policies = {"none": ua.SecurityPolicyType.NoSecurity,
                    "sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
                    "encrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt}
        server.set_security_policy([policies[s] for s in self.security])
        if self.users:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        if set(self.security) - {"none"} or self.users:
            await self._load_certificate(server)
        self.ns = await server.register_namespace(NAMESPACE_URI)
        checks: dict = {}
        readonly: set = set()
        objects = server.nodes.objects
        for asset in self.assets:
            await self._add_asset(server, objects, asset, checks, readonly)
        if self.bench_tags:
            bench = await objects.add_object(ua.NodeId("Bench", self.ns), f"{self.ns}:Bench")
            width = 5 if self.bench_tags > 10000 else 4
            for i in range(self.bench_tags):
                name = f"Bench.Tag{i:0{width}d}"
                var = await bench.add_variable(ua.NodeId(name, self.ns),
                                               f"{self.ns}:{name.split('.')[1]}",
                                               ua.Variant(0.0, ua.VariantType.Double))
                self.bench_nodes.append(var.nodeid)
                readonly.add(var.nodeid)
        iserver = server.iserver
        iserver.attribute_service = _checked_attribute_service(iserver.attribute_service, checks,
                                                               readonly, self._sim_clock)
        await server.start()
        self.server = server

    async def _load_certificate(self, server: Any) -> None:
        from asyncua.crypto.cert_gen import setup_self_signed_certificate
        from cryptography.x509.oid import ExtendedKeyUsageOID

        directory = Path(self.state_dir) if self.state_dir else default_state_dir()
        directory.mkdir(parents=True, exist_ok=True)
        key, cert = directory / "plant-key.pem", directory / "plant-cert.der"
        await setup_self_signed_certificate(key, cert, APPLICATION_URI, socket.gethostname(),
                                            [ExtendedKeyUsageOID.SERVER_AUTH],
                                            {"commonName": "twinbench plant",
                                             "organizationName": "twinbench"})
        os.chmod(key, 0o600)
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))

    async def _add_asset(self, server: Any, parent: Any, asset: AssetSim, checks: dict,
                         readonly: set) -> None:
        from asyncua import ua

        ns = self.ns
        obj = await parent.add_object(ua.NodeId(asset.name, ns), f"{ns}:{asset.name}")
        nodes: dict[str, Any] = {}
        for v in asset.outputs:
            var = await obj.add_variable(ua.NodeId(f"{asset.name}.{v.name}", ns), f"{ns}:{v.name}",
                                         ua.Variant(0.0, ua.VariantType.Double))
            await _describe(var, v.units, v.long_name)
            nodes[v.name] = var.nodeid
            readonly.add(var.nodeid)
        types = {"double": ua.VariantType.Double, "bool": ua.VariantType.Boolean,
                 "string": ua.VariantType.String}
        for sp in asset.setpoints.values():
            vt = types[sp.kind]
            var = await obj.add_variable(ua.NodeId(f"{asset.name}.{sp.name}", ns),
                                         f"{ns}:{sp.name}",
                                         ua.Variant(asset.values[sp.name], vt))
            await var.set_writable()
            await _describe(var, sp.units, sp.description,
                            (sp.low, sp.high) if sp.kind == "double" else None)
            nodes[sp.name] = var.nodeid

            def make_apply(name: str):
                async def apply(value: Any) -> None:
                    await self.on_write(asset, name, value)
                return apply

            checks[var.nodeid] = (vt, (lambda value, n=sp.name: asset.check(n, value)),
                                  make_apply(sp.name))
        seq = await obj.add_variable(ua.NodeId(f"{asset.name}.sequence", ns), f"{ns}:sequence",
                                     ua.Variant(0, ua.VariantType.UInt64))
        nodes["sequence"] = seq.nodeid
        readonly.add(seq.nodeid)
        truth = await obj.add_folder(ua.NodeId(f"{asset.name}.Truth", ns), f"{ns}:Truth")
        wear = await truth.add_variable(ua.NodeId(f"{asset.name}.true_wear", ns), f"{ns}:true_wear",
                                        ua.Variant(0.0, ua.VariantType.Double))
        await _describe(wear, "1", "hidden bearing damage (simulation truth, not a sensor)")
        nodes["true_wear"] = wear.nodeid
        readonly.add(wear.nodeid)
        self._nodes[asset.name] = nodes

    def _sim_clock(self) -> datetime | None:
        """The simulated time of the latest tick (None before the first)."""
        return None if self._last_sim_time is None else _utc(self._last_sim_time)

    async def set_value(self, asset: AssetSim, tag: str, value: Any) -> None:
        """Show a setpoint changed by another path (MQTT) on its node."""
        from asyncua import ua

        sp = asset.setpoints[tag]
        vt = {"double": ua.VariantType.Double, "bool": ua.VariantType.Boolean,
              "string": ua.VariantType.String}[sp.kind]
        await self.server.write_attribute_value(self._nodes[asset.name][tag],
                                                ua.DataValue(ua.Variant(value, vt),
                                                             SourceTimestamp=self._sim_clock()))

    async def publish(self, asset: AssetSim, reading: Reading) -> None:
        """Write one tick's readings into the address space."""
        from asyncua import ua

        write = self.server.iserver.aspace.write_attribute_value
        DV = _shared_datavalue()
        nodes = self._nodes[asset.name]
        ts = _utc(reading.time)
        self._last_sim_time = reading.time
        now = datetime.now(UTC)
        attr = ua.AttributeIds.Value
        bad = {"dropout": ua.StatusCode(ua.StatusCodes.BadNoCommunication),
               "comm_loss": ua.StatusCode(ua.StatusCodes.BadCommunicationError)}
        for tag, value in reading.values.items():
            status = reading.status[tag]
            dv = DV(ua.Variant(value, ua.VariantType.Double),
                              StatusCode=bad[status] if status else ua.StatusCode(),
                              SourceTimestamp=ts, ServerTimestamp=now)
            await write(nodes[tag], attr, dv)
        await write(nodes["sequence"], attr,
                    DV(ua.Variant(reading.seq, ua.VariantType.UInt64),
                                 SourceTimestamp=ts, ServerTimestamp=now))
        await write(nodes["true_wear"], attr,
                    DV(ua.Variant(reading.true_wear, ua.VariantType.Double),
                                 SourceTimestamp=ts, ServerTimestamp=now))

    async def publish_bench(self, t: float) -> None:
        """New values for every bench tag: ``sin(t + i / n)`` at wall time `t`."""
        from asyncua import ua

        write = self.server.iserver.aspace.write_attribute_value
        DV = _shared_datavalue()
        ts = _utc(t)
        attr = ua.AttributeIds.Value
        n = len(self.bench_nodes)
        Double = ua.VariantType.Double
        for i, node in enumerate(self.bench_nodes):
            dv = DV(ua.Variant(math.sin(t + i / n), Double), SourceTimestamp=ts,
                              ServerTimestamp=ts)
            await write(node, attr, dv)
            if i % 250 == 249:
                await asyncio.sleep(0)  # let requests and ticks through between chunks

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.stop()


async def _describe(var: Any, units: str, description: str,
                    eu_range: tuple[float, float] | None = None) -> None:
    from asyncua import ua

    if description:
        await var.write_attribute(ua.AttributeIds.Description,
                                  ua.DataValue(ua.Variant(ua.LocalizedText(description))))
    if units:
        eu = ua.EUInformation(NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
                              UnitId=-1, DisplayName=ua.LocalizedText(units),
                              Description=ua.LocalizedText(units))
        await var.add_property(var.nodeid.NamespaceIndex, "EngineeringUnits",
                               ua.Variant(eu, ua.VariantType.ExtensionObject))
    if eu_range is not None and all(math.isfinite(x) for x in eu_range):
        await var.add_property(var.nodeid.NamespaceIndex, "EURange",
                               ua.Variant(ua.Range(Low=eu_range[0], High=eu_range[1]),
                                          ua.VariantType.ExtensionObject))
