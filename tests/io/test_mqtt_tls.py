"""MQTT over TLS with username/password against a real mosquitto (fixture in conftest.py)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.io.conftest import TlsBroker, make_ca, make_server_cert
from twinbench.io.mqtt import ENV_PASSWORD, ENV_USERNAME, MqttSource, mqtt_source

TOPIC = "plant/pump1/speed"


def publish_tls(broker: TlsBroker, value: float) -> None:
    """Publish one QoS 1 message over TLS with the broker's account; wait for the PUBACK."""
    from paho.mqtt.client import CallbackAPIVersion, Client

    parts = urllib.parse.urlsplit(broker.url)
    client = Client(CallbackAPIVersion.VERSION2)
    client.username_pw_set(broker.username, broker.password)
    client.tls_set_context(ssl.create_default_context(cafile=str(broker.ca_file)))
    client.connect(parts.hostname, parts.port)
    client.loop_start()
    try:
        info = client.publish(TOPIC, str(value), qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def test_tls_with_credentials_round_trip(tls_broker: TlsBroker,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> list[float]:
        source = mqtt_source(tls_broker.url, {"speed": TOPIC}, decoder="numeric",
                             ca_file=tls_broker.ca_file, username=tls_broker.username,
                             password=tls_broker.password, connect_timeout=5.0)
        await source.start()
        try:
            assert source.status["connected"] and source.status["tls"]
            assert source.status["username"] == tls_broker.username
            text = repr(source) + str(source.status)
            assert tls_broker.password not in text
            publish_tls(tls_broker, 1450.0)
            deadline = time.monotonic() + 10
            values: list[float] = []
            while not values and time.monotonic() < deadline:
                batch = await source.read(timeout=0.5)
                assert batch is not None
                values.extend(batch.value.tolist())
            return values
        finally:
            await source.stop()

    assert asyncio.run(main()) == [1450.0]
    assert tls_broker.password not in caplog.text


def test_credentials_from_environment(tls_broker: TlsBroker,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_USERNAME, tls_broker.username)
    monkeypatch.setenv(ENV_PASSWORD, tls_broker.password)

    async def main() -> bool:
        source = mqtt_source(tls_broker.url, {"speed": TOPIC}, decoder="numeric",
                             ca_file=str(tls_broker.ca_file))
        assert source.username == tls_broker.username
        await source.start()
        try:
            return source.status["connected"] and source.status["password_set"]
        finally:
            await source.stop()

    assert asyncio.run(main())


def test_wrong_password_refused_clearly(tls_broker: TlsBroker,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wrong-pw-81b2d4"
    source = mqtt_source(tls_broker.url, {"speed": TOPIC}, decoder="numeric",
                         ca_file=tls_broker.ca_file, username=tls_broker.username,
                         password=wrong, connect_timeout=5.0)
    began = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        asyncio.run(source.start())
    assert time.monotonic() - began < 5.0  # the refusal itself, not the timeout
    message = str(info.value)
    assert tls_broker.url in message and "refused" in message
    assert "username/password" in message
    assert wrong not in message and wrong not in caplog.text and wrong not in repr(source)
    assert wrong not in str(source.status)


def test_untrusted_ca_refused_with_verification_error(tls_broker: TlsBroker,
                                                      tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    other_ca, _ = make_ca(other, "some-other-ca")
    source = mqtt_source(tls_broker.url, {"speed": TOPIC}, decoder="numeric", ca_file=other_ca,
                         username=tls_broker.username, password=tls_broker.password,
                         connect_timeout=5.0)
    with pytest.raises(ConnectionError) as info:
        asyncio.run(source.start())
    message = str(info.value)
    assert "certificate verification failed" in message and tls_broker.url in message
    assert str(other_ca) in message
    assert tls_broker.password not in message
    assert not source.status["connected"]


def test_plain_mqtt_to_tls_port_fails_within_timeout(tls_broker: TlsBroker) -> None:
    url = tls_broker.url.replace("mqtts://", "mqtt://")
    source = mqtt_source(url, {"speed": TOPIC}, decoder="numeric", username=tls_broker.username,
                         password=tls_broker.password, connect_timeout=1.0)
    began = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        asyncio.run(source.start())
    assert time.monotonic() - began < 4.0
    assert url in str(info.value)
    assert tls_broker.password not in str(info.value)


def test_tls_validation() -> None:
    tags = {"speed": TOPIC}
    with pytest.raises(ValueError, match="credentials in the URL") as info:
        mqtt_source("mqtts://twin:Secret-in-url@localhost", tags, decoder="numeric")
    assert "Secret-in-url" not in str(info.value)
    with pytest.raises(ValueError, match="ca_file: TLS options need an 'mqtts://' url"):
        mqtt_source("mqtt://localhost", tags, decoder="numeric", ca_file="ca.pem")
    with pytest.raises(FileNotFoundError, match="ca_file: no such file"):
        mqtt_source("mqtts://localhost", tags, decoder="numeric", ca_file="/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="password: given without a username"):
        mqtt_source("mqtt://localhost", tags, decoder="numeric", password="x")
    with pytest.raises(TypeError, match="password: expected a str or None, got int"):
        mqtt_source("mqtt://localhost", tags, decoder="numeric", username="u", password=1234)
    src = mqtt_source("mqtts://localhost", tags, decoder="numeric")
    assert (src.port, src.tls, src.username, src.status["password_set"]) == (8883, True, None, False)


async def _connects(source: MqttSource) -> bool:
    await source.start()
    try:
        return source.status["connected"]
    finally:
        await source.stop()


def test_hostname_checked_unless_tls_insecure(tls_broker_factory: Callable[...,
                                              TlsBroker]) -> None:
    broker = tls_broker_factory(san="DNS:other.example")  # signed by the trusted CA, wrong name
    options = {"decoder": "numeric", "ca_file": broker.ca_file, "username": broker.username,
               "password": broker.password, "connect_timeout": 5.0}
    with pytest.raises(ConnectionError, match="certificate verification failed") as info:
        asyncio.run(mqtt_source(broker.url, {"speed": TOPIC}, **options).start())
    assert "127.0.0.1" in str(info.value)
    assert asyncio.run(_connects(mqtt_source(broker.url, {"speed": TOPIC}, tls_insecure=True,
                                             **options)))


def test_client_certificate(tls_broker_factory: Callable[..., TlsBroker]) -> None:
    broker = tls_broker_factory(require_certificate=True)
    cert, key = make_server_cert(broker.certs, broker.ca, name="client", san="DNS:twin",
                                 usage="clientAuth")
    options = {"decoder": "numeric", "ca_file": broker.ca_file, "username": broker.username,
               "password": broker.password, "connect_timeout": 5.0}
    assert asyncio.run(_connects(mqtt_source(broker.url, {"speed": TOPIC}, certfile=cert,
                                             keyfile=key, **options)))
    with pytest.raises(ConnectionError) as info:  # the broker demands a certificate
        asyncio.run(mqtt_source(broker.url, {"speed": TOPIC}, **options).start())
    assert broker.url in str(info.value)


def test_password_from_keyring_when_installed(tls_broker: TlsBroker,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from twinbench.io.mqtt import KEYRING_SERVICE

    asked = []

    def get_password(service: str, user: str) -> str:
        asked.append((service, user))
        return tls_broker.password

    monkeypatch.setitem(sys.modules, "keyring", types.SimpleNamespace(get_password=get_password))
    monkeypatch.delenv(ENV_PASSWORD, raising=False)
    source = mqtt_source(tls_broker.url, {"speed": TOPIC}, decoder="numeric",
                         ca_file=tls_broker.ca_file, username=tls_broker.username)
    assert asked == [(KEYRING_SERVICE, f"{tls_broker.username}@127.0.0.1:{tls_broker.port}")]
    assert asyncio.run(_connects(source))


def test_unreadable_client_certificate_named(tmp_path: Path) -> None:
    bad = tmp_path / "client.pem"
    bad.write_text("not a certificate\n")
    source = mqtt_source("mqtts://127.0.0.1:8883", {"speed": TOPIC}, decoder="numeric",
                         certfile=bad)
    with pytest.raises(ValueError, match="cannot load the TLS files") as info:
        asyncio.run(source.start())
    assert str(bad) in str(info.value) and "mqtts://127.0.0.1:8883" in str(info.value)
    assert not source.status["connected"]
