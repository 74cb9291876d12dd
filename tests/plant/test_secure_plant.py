"""``twinbench plant --secure`` as a subprocess: twinbench's own sources read live values over
OPC-UA SignAndEncrypt (trusted on first use) and MQTT over TLS, and every wrong credential or
untrusted certificate is refused."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

pytest.importorskip("asyncua")

from twinbench.io.mqtt import mqtt_source
from twinbench.io.opcua import UntrustedCertificate, opcua_source
from twinbench.plant import PlantProcess
from twinbench.plant._broker import find_mosquitto

USER, PASSWORD = "operator", "Secure-plant-pw-3d8e"
SPEED_NODE = "ns=2;s=Pump1.speed"
SPEED_TOPIC = "plant/pump1/telemetry#speed"

needs_mosquitto = pytest.mark.skipif(find_mosquitto() is None,
                                     reason="--secure serves MQTT through mosquitto")


@pytest.fixture(scope="module")
def secure_plant(tmp_path_factory):
    """``twinbench plant --secure`` with MQTT (mosquitto over TLS) and the password from the
    environment."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    state = tmp_path_factory.mktemp("secure-plant")
    plant = PlantProcess(["--secure", "--mqtt", "auto", "--state-dir", str(state)],
                         env={"TWINBENCH_PLANT_PASSWORD": PASSWORD})
    plant.start(timeout=60)
    try:
        yield plant
    finally:
        plant.stop()


def opcua(plant, cert_dir, **options):
    options.setdefault("username", USER)
    options.setdefault("password", PASSWORD)
    return opcua_source(plant.opcua_url, {"speed": SPEED_NODE}, security="encrypt",
                        cert_dir=cert_dir, connect_timeout=15.0, **options)


def mqtt(plant, **options):
    options.setdefault("username", USER)
    options.setdefault("password", PASSWORD)
    return mqtt_source(plant.mqtt_url, {"speed": SPEED_TOPIC}, ca_file=plant.mqtt_ca_file,
                       connect_timeout=10.0, **options)


async def first_values(src, n=3, timeout=15.0):
    """At least `n` samples from a started source (or fail after `timeout` s)."""
    values: list[float] = []
    deadline = time.monotonic() + timeout
    while len(values) < n:
        assert time.monotonic() < deadline, f"only {values} within {timeout} s"
        batch = await src.read(timeout=0.5)
        assert batch is not None
        values.extend(batch.value.tolist())
    return values


@needs_mosquitto
def test_secure_plant_serves_both_protocols_to_twinbench_sources(secure_plant, tmp_path):
    plant = secure_plant
    printed = "\n".join(plant.lines)
    assert plant.mqtt_url.startswith("mqtts://127.0.0.1:")
    assert plant.mqtt_ca_file is not None and plant.mqtt_ca_file.is_file()
    assert "security encrypt; users operator" in printed
    assert "user operator; password from TWINBENCH_PLANT_PASSWORD" in printed
    assert PASSWORD not in printed  # a password given by the environment is never printed

    async def main():
        from asyncua import Client, ua

        endpoints = await Client(plant.opcua_url, timeout=10).connect_and_get_server_endpoints()
        modes = {e.SecurityMode for e in endpoints}
        async with opcua(plant, tmp_path / "client", trust="first-use") as src:
            opc_values = await first_values(src)
            fingerprint = src.status["server_fingerprint"]
        async with mqtt(plant) as src:
            mqtt_values = await first_values(src)
            tls = src.status["tls"]
        return modes, opc_values, fingerprint, mqtt_values, tls, ua

    modes, opc_values, fingerprint, mqtt_values, tls, ua = asyncio.run(main())
    assert modes == {ua.MessageSecurityMode.SignAndEncrypt}  # no unsecured endpoint
    assert fingerprint and tls
    for values in (opc_values, mqtt_values):
        assert np.isfinite(values).all() and 2000 < np.median(values) < 3600  # the pump runs


@needs_mosquitto
def test_wrong_credentials_and_untrusted_certificate_refused(secure_plant, tmp_path):
    plant = secure_plant

    async def main():
        errors = {}
        for name, options in {"opcua_user": {"username": "intruder"},
                              "opcua_password": {"password": "Wrong-pw-0000"}}.items():
            with pytest.raises(PermissionError) as info:
                await opcua(plant, tmp_path / "client", trust="first-use", **options).start()
            errors[name] = info.value
        with pytest.raises(UntrustedCertificate) as info:  # trust="list", empty trust list
            await opcua(plant, tmp_path / "fresh").start()
        errors["untrusted"] = info.value
        for name, options in {"mqtt_password": {"password": "Wrong-pw-0000"},
                              "mqtt_anonymous": {"username": None, "password": None}}.items():
            with pytest.raises(ConnectionError) as info:
                await mqtt(plant, **options).start()
            errors[name] = info.value
        return errors

    errors = asyncio.run(main())
    assert "'intruder'" in str(errors["opcua_user"])
    assert "refused user 'operator'" in str(errors["opcua_password"])
    assert "not in the trust list" in str(errors["untrusted"])
    assert not (tmp_path / "fresh" / "trusted").exists()
    assert "refused" in str(errors["mqtt_password"]) and plant.mqtt_url in str(
        errors["mqtt_password"])
    assert "refused" in str(errors["mqtt_anonymous"])
    for err in errors.values():
        assert "Wrong-pw-0000" not in str(err) + repr(err) and PASSWORD not in str(err)


def test_generated_password_printed_once_and_a_changed_certificate_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("TWINBENCH_PLANT_PASSWORD", raising=False)
    stderr = tmp_path / "plant.err"
    first = PlantProcess(["--secure", "--state-dir", str(tmp_path / "state-1")], stderr=stderr)
    with first:
        shown = [line for line in first.lines if "generated password" in line]
        assert len(shown) == 1
        password = shown[0].rsplit(": ", 1)[1]
        assert len(password) >= 20 and all(password not in line for line in first.lines
                                           if line is not shown[0])
        speed = asyncio.run(_read_once(opcua(first, tmp_path / "client", trust="first-use",
                                             password=password)))
        assert np.isfinite(speed)
    # the same address now answers with another certificate (another state dir)
    second = PlantProcess(["--secure", "--state-dir", str(tmp_path / "state-2")],
                          port=first.port, env={"TWINBENCH_PLANT_PASSWORD": PASSWORD})
    with second:
        with pytest.raises(UntrustedCertificate) as info:
            asyncio.run(opcua(second, tmp_path / "client", trust="first-use").start())
        assert "differs from the certificate first trusted" in str(info.value)
        # trusting the new certificate explicitly lets it in again
        from twinbench.io.opcua import trust_certificate

        trust_certificate(second.opcua_url, trust_dir=tmp_path / "client" / "trusted")
        assert np.isfinite(asyncio.run(_read_once(opcua(second, tmp_path / "client",
                                                        trust="first-use"))))
    assert password not in stderr.read_text()


async def _read_once(src):
    async with src:
        return float((await src.read_values()).value[0])


def test_secure_option_errors(capsys):
    from twinbench.cli import main
    from twinbench.plant import Plant

    assert main(["plant", "--secure", "--security", "none,encrypt"]) == 2
    assert "SignAndEncrypt only" in capsys.readouterr().err
    assert main(["plant", "--secure", "--classroom", "2"]) == 2
    with pytest.raises(ValueError, match="users: secure=True needs"):
        Plant(secure=True)
    with pytest.raises(ValueError, match="mqtt: secure=True starts its own TLS broker"):
        Plant(secure=True, users={"u": "p"}, mqtt="mqtt://127.0.0.1:1883")
    plant = Plant(secure=True, users={"u": "p"}, opcua_port=0)
    assert plant.security == ("encrypt",) and plant.mqtt_ca_file is None


def test_broker_certificates_are_reused_and_keys_private(tmp_path):
    from twinbench.plant._tls import broker_certificates

    made = broker_certificates(tmp_path)
    ca, server = made.ca_file.read_bytes(), made.certfile.read_bytes()
    again = broker_certificates(tmp_path)  # a restarted plant: clients keep their CA file
    assert again.ca_file.read_bytes() == ca and again.certfile.read_bytes() == server
    for key in (made.keyfile, tmp_path / "mqtt-ca-key.pem"):
        assert key.stat().st_mode & 0o077 == 0
