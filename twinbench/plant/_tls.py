"""What ``twinbench plant --secure`` needs for MQTT over TLS: a CA and a server certificate for
the broker (made with ``cryptography``, kept in the plant's state directory) and a mosquitto
password file (written here, so that ``mosquitto_passwd`` need not be installed).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BrokerCertificates", "broker_certificates", "mosquitto_password_file",
           "mosquitto_password_hash"]

#: PBKDF2 rounds of the password hashes. mosquitto_passwd 2.0 writes 101; more cost each
#: CONNECT a few milliseconds and make a leaked password file much slower to attack.
PASSWORD_ITERATIONS = 20_000
_RENEW_BEFORE = datetime.timedelta(days=7)


def mosquitto_password_hash(password: str, *, iterations: int = PASSWORD_ITERATIONS,
                            salt: bytes | None = None) -> str:
    """`password` in mosquitto's PBKDF2-SHA512 format, ``$7$<iterations>$<salt>$<hash>``.

    Examples
    --------
    The line ``mosquitto_passwd`` 2.0 wrote for "secret", from its salt:

    >>> written = ("$7$101$OhJfrXWoaZ7Uf3FV$p3TW9qo0qWXvsQ2MyTDNV6hC4GcIyR81FejA801hdqcdmPMKzgi"
    ...            "6tC2M2a9A/j05Ld8sHCbhn6ndu7AshOSHUg==")
    >>> mosquitto_password_hash("secret", iterations=101,
    ...                         salt=base64.b64decode("OhJfrXWoaZ7Uf3FV")) == written
    True
    """
    if not isinstance(password, str) or not password:
        raise ValueError("password: expected a non-empty str")
    salt = secrets.token_bytes(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return (f"$7${iterations}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(digest).decode()}")


def mosquitto_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """Write a mosquitto ``password_file`` for `users` (name -> password), readable by its
    owner only."""
    bad = [name for name in users if not name or ":" in name or "\n" in name]
    if bad:
        raise ValueError(f"users: MQTT user names cannot be empty or hold ':' or a newline, got "
                         f"{bad!r}")
    lines = "".join(f"{name}:{mosquitto_password_hash(pw)}\n" for name, pw in users.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(lines)
    return path


@dataclass(frozen=True)
class BrokerCertificates:
    """Files of the broker's TLS identity: ``ca_file`` is what clients trust."""

    ca_file: Path
    certfile: Path
    keyfile: Path


def broker_certificates(state_dir: Path) -> BrokerCertificates:
    """A CA (``mqtt-ca.pem``) and a server certificate it signed for 127.0.0.1 and localhost
    (``mqtt-server.pem``) in `state_dir`, made on first use and reused while valid, so that a
    client keeps trusting the same CA file across plant restarts. Keys are readable by their
    owner only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    state_dir.mkdir(parents=True, exist_ok=True)
    ca_file, ca_key_file = state_dir / "mqtt-ca.pem", state_dir / "mqtt-ca-key.pem"
    certfile, keyfile = state_dir / "mqtt-server.pem", state_dir / "mqtt-server-key.pem"
    now = datetime.datetime.now(datetime.UTC)

    def usable(path: Path) -> x509.Certificate | None:
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            return None
        return cert if cert.not_valid_after_utc - now > _RENEW_BEFORE else None

    ca = usable(ca_file)
    ca_key = None
    if ca is not None:
        try:
            ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), None)
        except (OSError, ValueError, TypeError):
            ca = None
    if ca is None or ca_key is None:
        ca_key = _new_key()
        ca = _certificate("twinbench plant MQTT CA", ca_key.public_key(), None, ca_key,
                          now, days=3650)
        _write_key(ca_key_file, ca_key)
        ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        certfile.unlink(missing_ok=True)  # signed by the old CA
    server = usable(certfile)
    if server is None or server.issuer != ca.subject or not keyfile.is_file():
        key = _new_key()
        server = _certificate("localhost", key.public_key(), ca, ca_key, now, days=825)
        _write_key(keyfile, key)
        certfile.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    return BrokerCertificates(ca_file, certfile, keyfile)


def _new_key() -> Any:  # a cryptography EC private key
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC


def _certificate(common_name: str, public_key: Any, issuer: Any, issuer_key: Any,
                 now: datetime.datetime, days: int) -> Any:
    """A CA certificate (no `issuer`: self-signed) or a server certificate signed by `issuer`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "twinbench"),
                         x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    is_ca = issuer is None
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(subject if is_ca else issuer.subject)
               .public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None),
                              critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                              critical=False))
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False,
                          decipher_only=False), critical=True)
    else:
        builder = (builder
                   .add_extension(x509.SubjectAlternativeName([
                       x509.DNSName("localhost"),
                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                   .add_extension(x509.KeyUsage(
                       digital_signature=True, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=False,
                       crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       issuer_key.public_key()), critical=False))
    return builder.sign(issuer_key, hashes.SHA256())
