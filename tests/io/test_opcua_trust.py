"""The OPC-UA server certificate checked against a trust list, against real plants.

Two plants with their own certificates (different state dirs) stand in for a server and an
impostor; a "changed certificate" is the record of one server's first-use certificate holding the
other plant's certificate.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import urllib.parse

import numpy as np
import pytest

pytest.importorskip("asyncua")

from twinbench.cli import main as cli_main
from twinbench.io.opcua import (
    UntrustedCertificate,
    _server_record,
    _trust_list,
    certificate_fingerprint,
    certificate_info,
    fetch_server_certificate,
    opcua_source,
    trust_certificate,
)

USER, PASSWORD = "operator", "Trust-test-pw-5e21"
SPEED = "ns=2;s=Pump1.speed"


@pytest.fixture(scope="module")
def plants(start_plant, tmp_path_factory):
    """Two secure plants: (plant, its certificate file) each."""
    made = []
    for name in ("a", "b"):
        state = tmp_path_factory.mktemp(f"plant-{name}")
        plant = start_plant(security=("encrypt",), users={USER: PASSWORD}, state_dir=state)
        made.append((plant, state / "plant-cert.der"))
    return made


def source(plant, trust_dir, **options):
    options.setdefault("connect_timeout", 15.0)
    return opcua_source(plant.opcua_url, {"speed": SPEED}, security="encrypt",
                        cert_dir=trust_dir.parent / "client", trust_dir=trust_dir,
                        username=USER, password=PASSWORD, **options)


async def read_speed(src):
    async with src:
        values = await src.read_values()
        return float(values.value[0]), src.status["server_fingerprint"]


def test_untrusted_certificate_refused_with_subject_and_fingerprint(plants, tmp_path):
    (plant, cert_file), _ = plants
    trust_dir = tmp_path / "trusted"
    with pytest.raises(UntrustedCertificate) as info:
        asyncio.run(source(plant, trust_dir).start())  # trust="list" is the default
    err = info.value
    fingerprint = certificate_fingerprint(cert_file.read_bytes())
    assert isinstance(err, ConnectionError)
    assert err.certificate.fingerprint == fingerprint and err.url == plant.opcua_url
    message = str(err)
    assert fingerprint in message and "CN=twinbench plant" in message
    assert "not in the trust list" in message and str(trust_dir) in message
    assert f"twinbench trust {plant.opcua_url}" in message and "first-use" in message
    assert PASSWORD not in message + repr(err)
    assert not trust_dir.exists()  # nothing stored by a refusal


def test_trusted_by_url_by_file_and_pinned(plants, tmp_path):
    (plant, cert_file), (other, other_cert) = plants
    fingerprint = certificate_fingerprint(cert_file.read_bytes())
    by_url = trust_certificate(plant.opcua_url, trust_dir=tmp_path / "by-url")
    assert by_url.fingerprint == fingerprint and by_url.path.parent == tmp_path / "by-url"
    by_file = trust_certificate(cert_file, trust_dir=tmp_path / "by-file")
    assert by_file.fingerprint == fingerprint

    async def main():
        fetched = await fetch_server_certificate(plant.opcua_url)
        results = [await read_speed(source(plant, tmp_path / d)) for d in ("by-url", "by-file")]
        # a pinned certificate needs no trust list; a wrong pin is refused
        results.append(await read_speed(source(plant, tmp_path / "empty",
                                                server_certificate=cert_file)))
        with pytest.raises(UntrustedCertificate, match="not the pinned server_certificate"):
            await source(plant, tmp_path / "empty", server_certificate=other_cert).start()
        # a trust list holding another server's certificate only: refused
        with pytest.raises(UntrustedCertificate, match="not in the trust list"):
            await source(other, tmp_path / "by-file").start()
        return fetched, results

    fetched, results = asyncio.run(main())
    assert fetched.fingerprint == fingerprint and fetched.subject == by_url.subject
    for speed, seen in results:
        assert np.isfinite(speed) and seen == fingerprint


def test_first_use_stores_warns_and_then_refuses_a_changed_certificate(plants, tmp_path,
                                                                       caplog):
    (plant, cert_file), (other, other_cert) = plants
    trust_dir = tmp_path / "trusted"
    fingerprint = certificate_fingerprint(cert_file.read_bytes())
    caplog.set_level(logging.DEBUG)

    async def main():
        first = await read_speed(source(plant, trust_dir, trust="first-use"))
        again = await read_speed(source(plant, trust_dir, trust="first-use"))
        return first, again

    first, again = asyncio.run(main())
    assert first[1] == again[1] == fingerprint
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and "first use" in r.getMessage()]
    assert len(warnings) == 1 and fingerprint in warnings[0]  # once, at the first connect
    stored = list(trust_dir.iterdir())
    assert [certificate_info(p).fingerprint for p in stored] == [fingerprint]
    # the same server (host:port) now presents another certificate
    other_port = urllib.parse.urlsplit(other.opcua_url).port
    other_record = _server_record(trust_dir, "127.0.0.1", other_port)
    shutil.copy(cert_file, other_record)
    with pytest.raises(UntrustedCertificate) as info:
        asyncio.run(source(other, trust_dir, trust="first-use").start())
    message = str(info.value)
    assert "differs from the certificate first trusted" in message
    assert certificate_fingerprint(other_cert.read_bytes()) in message and fingerprint in message
    assert other_record.read_bytes() == cert_file.read_bytes()  # not overwritten
    assert PASSWORD not in caplog.text


def test_cli_trust_prints_and_stores_only_when_confirmed(plants, tmp_path, capsys):
    (plant, cert_file), _ = plants
    fingerprint = certificate_fingerprint(cert_file.read_bytes())
    trust_dir = tmp_path / "trusted"
    assert cli_main(["trust", plant.opcua_url, "--trust-dir", str(trust_dir)]) == 0
    out = capsys.readouterr().out
    assert fingerprint in out and "not stored" in out and not trust_dir.exists()
    assert cli_main(["trust", plant.opcua_url, "--trust-dir", str(trust_dir), "--yes"]) == 0
    out = capsys.readouterr().out
    assert "trusted: stored in" in out
    assert [certificate_info(p).fingerprint for p in trust_dir.iterdir()] == [fingerprint]
    # the stored record also serves first use: the same certificate is accepted
    speed, seen = asyncio.run(read_speed(source(plant, trust_dir, trust="first-use")))
    assert seen == fingerprint
    # a file works too; a bad one is a clear error
    assert cli_main(["trust", str(cert_file)]) == 0 and fingerprint in capsys.readouterr().out
    bad = tmp_path / "bad.der"
    bad.write_bytes(b"not a certificate")
    assert cli_main(["trust", str(bad), "--trust-dir", str(trust_dir), "--yes"]) == 2
    assert "expected an X.509 certificate" in capsys.readouterr().err


def test_unreachable_server_and_validation(tmp_path, capsys):
    from twinbench.plant._opcua import free_port

    url = f"opc.tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match="cannot connect"):
        asyncio.run(fetch_server_certificate(url, timeout=3))
    assert cli_main(["trust", url, "--timeout", "3"]) == 2
    assert url in capsys.readouterr().err
    tags = {"speed": SPEED}
    with pytest.raises(ValueError, match="trust: expected one of"):
        opcua_source(url, tags, security="encrypt", trust="always")
    with pytest.raises(ValueError, match="trust, trust_dir: need security="):
        opcua_source(url, tags, trust="first-use")
    with pytest.raises(TypeError, match="trust_dir: expected a path"):
        opcua_source(url, tags, security="encrypt", trust_dir=3)
    src = opcua_source(url, tags, security="sign", cert_dir=tmp_path)
    assert src.trust_dir == tmp_path / "trusted" and src.status["trust"] == "list"
    assert src.status["server_fingerprint"] is None
    # a file in the trust list that is not a certificate is skipped, not fatal
    (tmp_path / "trusted").mkdir()
    (tmp_path / "trusted" / "junk.pem").write_text("junk")
    assert _trust_list(tmp_path / "trusted") == {}
