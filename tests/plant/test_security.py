"""OPC-UA SignAndEncrypt with a username: the right password reads, a wrong one is refused."""

from __future__ import annotations

import asyncio
import socket

import pytest

asyncua = pytest.importorskip("asyncua")
from asyncua import Client, ua

USER, PASSWORD = "operator", "Plant-test-pw-41c9"
CLIENT_URI = "urn:twinbench:tests:client"


@pytest.fixture(scope="module")
def secure_plant(start_plant, tmp_path_factory):
    state = tmp_path_factory.mktemp("plant-state")
    plant = start_plant(security=("encrypt",), users={USER: PASSWORD}, state_dir=state)
    return plant, state


@pytest.fixture(scope="module")
def client_cert(tmp_path_factory):
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    d = tmp_path_factory.mktemp("client-cert")
    key, cert = d / "client-key.pem", d / "client-cert.der"
    asyncio.run(setup_self_signed_certificate(key, cert, CLIENT_URI, socket.gethostname(),
                                              [ExtendedKeyUsageOID.CLIENT_AUTH],
                                              {"commonName": "twinbench tests"}))
    return cert, key


async def _session(url, cert, key, user=None, password=None):
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

    client = Client(url, timeout=10)
    client.application_uri = CLIENT_URI
    await client.set_security(SecurityPolicyBasic256Sha256, certificate=str(cert),
                              private_key=str(key), mode=ua.MessageSecurityMode.SignAndEncrypt)
    if user is not None:
        client.set_user(user)
        client.set_password(password)
    await client.connect()
    try:
        speed = await client.get_node("ns=2;s=Pump1.speed").read_value()
        sp = client.get_node("ns=2;s=Pump1.speed_setpoint")
        await sp.write_value(ua.DataValue(ua.Variant(2950.0, ua.VariantType.Double)))
        return speed
    finally:
        await client.disconnect()


def test_encrypt_with_users(secure_plant, client_cert):
    plant, state = secure_plant
    cert, key = client_cert
    assert (state / "plant-cert.der").is_file() and (state / "plant-key.pem").is_file()
    assert (state / "plant-key.pem").stat().st_mode & 0o077 == 0

    async def main():
        # the server offers SignAndEncrypt only, and user names only
        endpoints = await Client(plant.opcua_url, timeout=10).connect_and_get_server_endpoints()
        assert {e.SecurityMode for e in endpoints} == {ua.MessageSecurityMode.SignAndEncrypt}
        speed = await _session(plant.opcua_url, cert, key, USER, PASSWORD)
        assert 2500 < speed < 3200
        refused = {(USER, "wrong-password"): "BadUserAccessDenied",
                   ("nobody", PASSWORD): "BadUserAccessDenied",
                   (None, None): "BadIdentityTokenRejected"}  # anonymous
        for (user, password), status in refused.items():
            with pytest.raises(ua.UaStatusCodeError) as info:
                await _session(plant.opcua_url, cert, key, user, password)
            assert type(info.value).__name__ == status, user
        # no security at all: refused too
        with pytest.raises(Exception):  # noqa: B017
            async with Client(plant.opcua_url, timeout=5) as client:
                await client.get_node("ns=2;s=Pump1.speed").read_value()

    asyncio.run(asyncio.wait_for(main(), 60))
