"""The plant's MQTT side (paho-mqtt 2.x): telemetry out, commands in, acknowledgements out.

Topics per asset (``pump1``, ``wind1``): ``plant/<asset>/telemetry`` (JSON ``{"ts": epoch ms of
simulated time, "seq": n, <output>: value, ...}``; a dropped-out output is omitted),
``plant/<asset>/command`` (``{"tag": ..., "value": ..., "id": ...}`` as
:meth:`twinbench.io.mqtt.MqttSource.write` sends) and ``plant/<asset>/ack`` (``{"id": ...,
"ok": true}`` or ``{"id": ..., "ok": false, "error": "..."}``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twinbench.plant._sim import AssetSim, Reading

__all__ = ["PlantMqtt", "topics"]

_logger = logging.getLogger("twinbench.plant")


def topics(asset_key: str, prefix: str = "plant") -> dict[str, str]:
    """The telemetry, command and ack topics of an asset (``"pump1"``) under `prefix`
    (``"plant"``; a classroom gives each student's plant its own, ``"plant/student03"``)."""
    return {"telemetry": f"{prefix}/{asset_key}/telemetry",
            "command": f"{prefix}/{asset_key}/command", "ack": f"{prefix}/{asset_key}/ack"}


class PlantMqtt:
    """Publish telemetry and serve commands for `assets` on the broker at `url`.

    ``mqtts://`` connects over TLS, verifying the broker against `ca_file`; `username` and
    `password` (or ``user:password@`` in an ``mqtt://`` URL) log in.
    """

    def __init__(self, url: str, assets: list[AssetSim], *, qos: int,
                 on_command: Callable[[AssetSim, str, Any], Awaitable[Any]],
                 connect_timeout: float = 10.0, prefix: str = "plant",
                 ca_file: str | Path | None = None, username: str | None = None,
                 password: str | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            # the URL may hold a password: not echoed
            raise ValueError("mqtt: expected mqtt://host[:port], mqtts://host[:port], 'auto' or "
                             "'none'")
        self.tls = parts.scheme == "mqtts"
        if self.tls and ca_file is None:
            raise ValueError("ca_file: an mqtts:// broker needs the CA file that signed it")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (8883 if self.tls else 1883)
        self.ca_file = ca_file
        self._username = username or (urllib.parse.unquote(parts.username)
                                      if parts.username else None)
        self._password = password or (urllib.parse.unquote(parts.password)
                                      if parts.password else None)
        self.assets = {a.key: a for a in assets}
        self.qos = qos
        self.on_command = on_command
        self.connect_timeout = connect_timeout
        self.prefix = prefix
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = threading.Event()
        self._command_topics = {topics(k, prefix)["command"]: k for k in self.assets}
        self.published = 0
        self.commands = 0

    @property
    def public_url(self) -> str:
        """The broker URL without credentials."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    async def start(self) -> None:
        from paho.mqtt.client import CallbackAPIVersion, Client

        self._loop = asyncio.get_running_loop()
        client = Client(CallbackAPIVersion.VERSION2, client_id="", clean_session=True)
        client.max_queued_messages_set(10000)
        if self._username:
            client.username_pw_set(self._username, self._password)
        if self.tls:
            import ssl

            # CERT_REQUIRED and host name checking: the broker must be the one the CA signed
            client.tls_set_context(ssl.create_default_context(cafile=str(self.ca_file)))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 30)
        self._client = client
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()
        ok = await asyncio.to_thread(self._connected.wait, self.connect_timeout)
        if not ok:
            await self.stop()
            raise ConnectionError(f"plant: could not connect to the MQTT broker {self.public_url} "
                                  f"within {self.connect_timeout:g} s")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            _logger.warning("mqtt %s: connection refused: %s", self.public_url, reason)
            return
        client.subscribe([(t, 1) for t in self._command_topics])
        self._connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any = None) -> None:
        self._connected.clear()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        key = self._command_topics.get(message.topic)
        loop = self._loop
        if key is None or loop is None:
            return
        payload = bytes(message.payload)
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._command(key, payload)))

    async def _command(self, key: str, payload: bytes) -> None:
        import orjson

        self.commands += 1
        asset = self.assets[key]
        command_id = None
        try:
            try:
                command = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise ValueError("command: not JSON") from None
            if not isinstance(command, dict):  # answered by an ack, as ValueErrors are
                raise ValueError("command: expected a JSON object {tag, value, id}")  # noqa: TRY004
            command_id = command.get("id")
            tag, value = command.get("tag"), command.get("value")
            if not isinstance(tag, str) or "value" not in command:
                raise ValueError("command: expected a JSON object {tag, value, id}")
            await self.on_command(asset, tag, value)
            ack = {"id": command_id, "ok": True}
        except ValueError as exc:
            _logger.info("mqtt command rejected: %s", exc)
            ack = {"id": command_id, "ok": False, "error": str(exc)}
        if command_id is not None and self._client is not None:
            self._client.publish(topics(key, self.prefix)["ack"], orjson.dumps(ack), qos=1)

    def publish(self, asset: AssetSim, reading: Reading) -> None:
        """Publish one tick's telemetry (nothing while communication is lost)."""
        import orjson

        client = self._client
        if client is None or reading.comm_loss:
            return
        msg: dict[str, Any] = {"ts": round(reading.time * 1000.0), "seq": reading.seq}
        for tag, value in reading.values.items():
            if reading.status[tag] is None:
                msg[tag] = value
        client.publish(topics(asset.key, self.prefix)["telemetry"], orjson.dumps(msg), qos=self.qos)
        self.published += 1

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.disconnect()
        except Exception:  # noqa: BLE001, S110 - already gone
            pass
        try:
            await asyncio.wait_for(asyncio.to_thread(client.loop_stop), 5.0)
        except TimeoutError:
            _logger.warning("mqtt %s: paho thread did not stop within 5 s", self.public_url)
