"""twinbench.auth: password hashes, the users file and ``twinbench users``; and the server side's
pure parts (twinbench._voila_auth): the stamping of message headers for each websocket protocol,
the identity provider's cookies and the authorizer. The browser flows are in
tests/ui/test_signin.py.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from twinbench import auth
from twinbench.auth import (
    PERMISSIONS,
    ROLES,
    UsersFile,
    allowed,
    hash_password,
    users_file,
    verify_password,
)

PASSWORD = "s3cret-Pump-Room"


# -- roles ----------------------------------------------------------------------------------

def test_roles_and_permissions():
    assert ROLES == ("viewer", "operator", "engineer")
    assert PERMISSIONS["viewer"] == frozenset()
    assert [allowed(r, "write") for r in ROLES] == [False, True, True]
    assert [allowed(r, "scenario") for r in ROLES] == [False, True, True]
    assert [allowed(r, "configure") for r in ROLES] == [False, False, True]
    assert not allowed(None, "write") and not allowed("admin", "write")
    with pytest.raises(ValueError, match="action: expected one of"):
        allowed("engineer", "delete")


def test_auth_mode_fails_closed():
    assert auth.auth_mode({}) == "none"
    assert auth.auth_mode({"TWINBENCH_AUTH": "none"}) == "none"
    assert auth.auth_mode({"TWINBENCH_AUTH": "Users"}) == "users"
    assert auth.auth_mode({"TWINBENCH_AUTH": "token"}) == "token"
    assert auth.auth_mode({"TWINBENCH_AUTH": "on"}) == "users"  # a typo keeps sign-in on


# -- hashes ---------------------------------------------------------------------------------

def test_hash_is_salted_scrypt_and_verifies():
    h1, h2 = hash_password(PASSWORD), hash_password(PASSWORD)
    assert h1 != h2  # a fresh salt each time
    scheme, n, r, p, salt, key = h1.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(key)) == 32
    assert PASSWORD not in h1
    assert verify_password(PASSWORD, h1) and verify_password(PASSWORD, h2)
    assert not verify_password(PASSWORD + "x", h1)
    assert not verify_password("", h1)


@pytest.mark.parametrize("hashed", [
    "", "plain", "scrypt$16384$8$1$AAAA", "pbkdf2$16384$8$1$AAAA$AAAA",
    "scrypt$16384$8$1$not base64!$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    # parameters a tampered file could use to make each sign-in take gigabytes or forever
    "scrypt$1073741824$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "scrypt$16384$1000$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "scrypt$16385$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
])
def test_malformed_hashes_match_nothing(hashed):
    assert verify_password(PASSWORD, hashed) is False


@pytest.mark.parametrize("bad, error", [("short", ValueError), ("x" * 1025, ValueError),
                                        (12345678, TypeError)])
def test_password_rules(bad, error):
    with pytest.raises(error, match="password: expected") as info:
        hash_password(bad)
    if isinstance(bad, str):
        assert bad not in str(info.value)  # the error never repeats the password


# -- the users file -------------------------------------------------------------------------

def test_users_file_round_trip(tmp_path):
    path = tmp_path / "conf" / "users.json"
    users = users_file(path)
    assert isinstance(users, UsersFile) and users.names() == []
    users.add("alice", PASSWORD, "operator")
    users.add("bob.b@example-1", "another-password", "viewer")
    assert users.names() == ["alice", "bob.b@example-1"]
    assert users.role("alice") == "operator" and users.role("nobody") is None
    assert users.verify("alice", PASSWORD) == "operator"
    assert users.verify("alice", "another-password") is None
    assert users.verify("nobody", PASSWORD) is None
    users.add("alice", "new-password-1", "engineer")  # replaces
    assert users.verify("alice", PASSWORD) is None
    assert users.verify("alice", "new-password-1") == "engineer"
    users.remove("bob.b@example-1")
    assert users.names() == ["alice"]
    with pytest.raises(KeyError, match="no user 'bob.b@example-1'"):
        users.remove("bob.b@example-1")


def test_users_file_is_private_atomic_and_holds_no_password(tmp_path):
    path = tmp_path / "new" / "users.json"
    users = UsersFile(path)
    users.add("alice", PASSWORD, "operator")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    inode = path.stat().st_ino
    users.add("carol", "password-of-carol", "engineer")
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    for secret in (PASSWORD, "password-of-carol"):
        for form in (secret.encode(), secret.encode("utf-16-le"), base64.b64encode(secret.encode())):
            assert form not in raw
    data = json.loads(raw)
    assert data["version"] == 1
    assert data["users"]["alice"]["role"] == "operator"
    assert data["users"]["alice"]["password"].startswith("scrypt$")
    assert [p.name for p in path.parent.iterdir()] == ["users.json"]  # no temporary left


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "token:1", "ümlaut", "a/b", None])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="name: expected 1 to 64"):
        UsersFile(tmp_path / "u.json").add(name, PASSWORD, "viewer")


def test_bad_role_is_refused(tmp_path):
    with pytest.raises(ValueError, match="role: expected one of viewer, operator, engineer"):
        UsersFile(tmp_path / "u.json").add("alice", PASSWORD, "admin")


def test_a_broken_file_is_named_and_a_broken_entry_signs_nobody_in(tmp_path):
    path = tmp_path / "u.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{path}: not a twinbench users file"):
        UsersFile(path).names()
    good = {"role": "viewer", "password": hash_password(PASSWORD)}
    path.write_text(json.dumps({"users": {"ok": good, "bad role": good,
                                          "norole": {"password": good["password"]},
                                          "admin": {**good, "role": "admin"}}}))
    assert UsersFile(path).names() == ["ok"]


# -- twinbench users ------------------------------------------------------------------------

def _cli(*args, env=None):
    full = {k: v for k, v in os.environ.items()
            if k not in ("TWINBENCH_NEW_PASSWORD", "TWINBENCH_USERS")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "twinbench", "users", *args],
                          capture_output=True, text=True, env=full, stdin=subprocess.DEVNULL,
                          timeout=60, check=False)


def test_cli_round_trip(tmp_path):
    path = tmp_path / "users.json"
    out = _cli("add", "vera", "--role", "viewer", "--file", str(path),
               env={"TWINBENCH_NEW_PASSWORD": PASSWORD})
    assert out.returncode == 0, out.stderr
    assert "added vera (viewer)" in out.stdout and PASSWORD not in out.stdout + out.stderr
    assert UsersFile(path).verify("vera", PASSWORD) == "viewer"

    gen = _cli("add", "otto", "--role", "operator", "--generate", "--file", str(path))
    assert gen.returncode == 0, gen.stderr
    password = gen.stdout.split("generated password (shown only now): ")[1].strip()
    assert len(password) >= 16 and password not in path.read_text()
    assert UsersFile(path).verify("otto", password) == "operator"

    # the default file: $TWINBENCH_USERS
    listed = _cli("list", env={"TWINBENCH_USERS": str(path)})
    assert listed.returncode == 0 and listed.stdout.split() == ["otto", "operator",
                                                                 "vera", "viewer"]
    assert _cli("remove", "otto", "--file", str(path)).returncode == 0
    assert UsersFile(path).names() == ["vera"]
    missing = _cli("remove", "otto", "--file", str(path))
    assert missing.returncode == 2 and "no user 'otto'" in missing.stderr


def test_cli_refusals(tmp_path):
    path = str(tmp_path / "users.json")
    short = _cli("add", "vera", "--role", "viewer", "--file", path,
                 env={"TWINBENCH_NEW_PASSWORD": "short"})
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    assert "short" not in short.stderr.replace("at least", "")
    both = _cli("add", "vera", "--role", "viewer", "--generate", "--file", path,
                env={"TWINBENCH_NEW_PASSWORD": PASSWORD})
    assert both.returncode == 2 and "--generate" in both.stderr
    badrole = _cli("add", "vera", "--role", "admin", "--file", path)
    assert badrole.returncode == 2 and "invalid choice" in badrole.stderr
    assert not Path(path).exists()


def test_cli_prompts_twice(monkeypatch, tmp_path, capsys):
    from twinbench import cli

    answers = iter([PASSWORD, PASSWORD, PASSWORD, "different-one"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    monkeypatch.delenv("TWINBENCH_NEW_PASSWORD", raising=False)
    path = tmp_path / "users.json"
    assert cli.main(["users", "add", "eve", "--role", "engineer", "--file", str(path)]) == 0
    assert UsersFile(path).verify("eve", PASSWORD) == "engineer"
    assert cli.main(["users", "add", "eve", "--role", "viewer", "--file", str(path)]) == 2
    assert "the two entries differ" in capsys.readouterr().err
    assert UsersFile(path).role("eve") == "engineer"


def test_auth_module_stays_light():
    code = ("import sys, twinbench.auth, twinbench.app\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'jupyter_server', 'tornado', 'voila', 'jinja2', 'zmq'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# -- stamping (the server side, without a server) -------------------------------------------

voila_auth = pytest.importorskip("twinbench._voila_auth")
FORGED = {"msg_id": "m1", "msg_type": "comm_msg", "username": "admin", "session": "s",
          "date": "2025-01-01T00:00:00Z", "version": "5.3", "twinbench_role": "engineer"}
CONTENT = {"comm_id": "c1", "data": {"method": "custom", "content": {"event": "click"}}}


def _v1(parts, channel="shell"):
    from jupyter_server.services.kernels.connection.base import serialize_msg_to_ws_v1

    return serialize_msg_to_ws_v1([json.dumps(p).encode() if not isinstance(p, bytes) else p
                                   for p in parts], channel)


def test_stamp_v1_overwrites_the_header_and_keeps_the_rest():
    from jupyter_server.services.kernels.connection.base import deserialize_msg_from_ws_v1

    msg = _v1([FORGED, {}, {}, CONTENT, b"\x00\x01binary"])
    out = voila_auth.stamp_ws_message(msg, voila_auth.V1_PROTOCOL, "vera", "viewer")
    channel, parts = deserialize_msg_from_ws_v1(out)
    header = json.loads(parts[0])
    assert channel == "shell"
    assert header["username"] == "vera" and header["twinbench_role"] == "viewer"
    assert {k: v for k, v in header.items() if k not in ("username", "twinbench_role")} == \
        {k: v for k, v in FORGED.items() if k not in ("username", "twinbench_role")}
    assert json.loads(parts[3]) == CONTENT and parts[4] == b"\x00\x01binary"


def test_stamp_legacy_json_and_binary():
    text = json.dumps({"channel": "shell", "header": FORGED, "parent_header": {},
                       "metadata": {}, "content": CONTENT})
    out = json.loads(voila_auth.stamp_ws_message(text, None, "vera", "viewer"))
    assert out["header"]["username"] == "vera" and out["header"]["twinbench_role"] == "viewer"
    assert out["content"] == CONTENT and out["channel"] == "shell"

    from jupyter_server.services.kernels.connection.base import (
        deserialize_binary_message,
        serialize_binary_message,
    )

    binary = serialize_binary_message({"channel": "shell", "header": FORGED,
                                       "parent_header": {}, "metadata": {}, "content": CONTENT,
                                       "buffers": [b"abc", b"\xff" * 10]})
    out = deserialize_binary_message(voila_auth.stamp_ws_message(binary, "", "vera", None))
    assert out["header"]["username"] == "vera" and "twinbench_role" not in out["header"]
    assert out["buffers"] == [b"abc", b"\xff" * 10] and out["content"] == CONTENT


@pytest.mark.parametrize("bad", [
    "not json", json.dumps([1, 2]), json.dumps({"channel": "shell", "header": "x"}),
    b"\x00\x00\x00\x05short", b"",
])
def test_unreadable_messages_raise_so_they_are_dropped(bad):
    with pytest.raises(ValueError):
        voila_auth.stamp_ws_message(bad, None, "vera", "viewer")


@pytest.mark.parametrize("bad", [b"", b"\x01" * 7, _v1([["a list"], {}, {}, {}]),
                                 "text on v1"])
def test_unreadable_v1_messages_raise(bad):
    with pytest.raises(ValueError):
        voila_auth.stamp_ws_message(bad, voila_auth.V1_PROTOCOL, "vera", "viewer")


# -- the identity provider and the authorizer, outside a server -----------------------------

@pytest.fixture(autouse=True)
def server_env():
    """The provider writes TWINBENCH_AUTH and TWINBENCH_TOKEN_ROLE into the environment (for
    the kernels a server starts): put them back for the other tests of this process."""
    names = ("TWINBENCH_AUTH", "TWINBENCH_TOKEN_FILE", "TWINBENCH_TOKEN_ROLE", "TWINBENCH_USERS")
    saved = {n: os.environ.get(n) for n in names}
    for n in names:
        os.environ.pop(n, None)
    os.environ["TWINBENCH_AUTH"] = "users"  # what VoilaServer puts in the server's environment
    yield
    for n, v in saved.items():
        if v is None:
            os.environ.pop(n, None)
        else:
            os.environ[n] = v


@pytest.fixture
def provider(tmp_path):
    path = tmp_path / "users.json"
    UsersFile(path).add("vera", PASSWORD, "viewer")
    UsersFile(path).add("olga", "olga-password", "operator")
    return voila_auth.TwinbenchIdentityProvider(users_path=str(path), token="tok-en-123",
                                                token_role="operator")


def test_provider_cookies_follow_the_users_file(provider):
    vera = provider.check_password("vera", PASSWORD)
    assert (vera.username, vera.role, vera.source) == ("vera", "viewer", "users")
    assert provider.check_password("vera", "wrong-password") is None
    assert provider.check_password("nobody", PASSWORD) is None
    cookie = provider.user_to_cookie(vera)
    assert PASSWORD not in cookie and "scrypt" not in cookie
    again = provider.user_from_cookie(cookie)
    assert (again.username, again.role) == ("vera", "viewer")
    # a new role applies at once; a new password ends the sessions made with the old one
    users = UsersFile(provider.users_path)
    users.add("olga", "olga-password", "engineer")
    olga = provider.user_from_cookie(provider.user_to_cookie(
        provider.check_password("olga", "olga-password")))
    assert provider.role_of(olga) == "engineer"
    users.add("vera", "vera-new-password", "engineer")
    assert provider.user_from_cookie(cookie) is None
    assert provider.role_of(again) is None  # an open websocket of hers stops being stamped
    users.remove("olga")
    assert provider.role_of(olga) is None


def test_provider_token_users(provider):
    user = provider.check_token("tok-en-123")
    assert user.username.startswith("token:") and user.role == "operator"
    assert provider.check_token("tok-en-12") is None and provider.check_token("") is None
    back = provider.user_from_cookie(provider.user_to_cookie(user))
    assert back.username == user.username and back.role == "operator"


def test_provider_refuses_to_start_without_what_it_needs(tmp_path):
    with pytest.raises(ValueError, match="users file .* does not exist"):
        voila_auth.TwinbenchIdentityProvider(users_path=str(tmp_path / "none.json"),
                                             mode="users")
    with pytest.raises(ValueError, match="no token"):
        voila_auth.TwinbenchIdentityProvider(mode="token", token="")
    with pytest.raises(ValueError, match="TWINBENCH_TOKEN_ROLE: expected one of"):
        voila_auth.TwinbenchIdentityProvider(mode="token", token="abcdefgh",
                                             token_role="admin")

    from jupyter_server.services.kernels.connection.channels import (
        ZMQChannelsWebsocketConnection,
    )
    from traitlets.config import Configurable

    class Parent(Configurable):  # Voila with Jupyter Server's connection: nothing would stamp
        kernel_websocket_connection_class = ZMQChannelsWebsocketConnection

    with pytest.raises(ValueError, match="kernel_websocket_connection_class: expected"):
        voila_auth.TwinbenchIdentityProvider(parent=Parent(), mode="token", token="abcdefgh")


def test_provider_reads_the_token_file_and_sets_the_mode_for_kernels(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file-1\n")
    os.environ["TWINBENCH_TOKEN_FILE"] = str(token_file)
    prov = voila_auth.TwinbenchIdentityProvider(mode="token", token="")
    assert prov.token == "from-a-file-1"
    assert os.environ["TWINBENCH_AUTH"] == "token"
    assert os.environ["TWINBENCH_TOKEN_ROLE"] == "viewer"
    # a server whose environment says "no sign-in" to its kernels must not start with sign-in,
    # nor one whose (preheated) kernels were started without the variable
    os.environ["TWINBENCH_AUTH"] = "none"
    with pytest.raises(ValueError, match="TWINBENCH_AUTH='none' in the server's environment"):
        voila_auth.TwinbenchIdentityProvider(mode="token", token="abcdefgh")
    del os.environ["TWINBENCH_AUTH"]
    with pytest.raises(ValueError, match="TWINBENCH_AUTH is not in the server's environment"):
        voila_auth.TwinbenchIdentityProvider(mode="token", token="abcdefgh")


class _Handler:
    def __init__(self, kernel_id):
        self.path_kwargs = {"kernel_id": kernel_id}
        self.path_args = []


def test_authorizer_a_kernel_is_its_first_users_and_nothing_else_is_allowed(provider):
    authz = voila_auth.TwinbenchAuthorizer(identity_provider=provider)
    vera = provider.check_password("vera", PASSWORD)
    olga = provider.check_password("olga", "olga-password")
    assert authz.is_authorized(_Handler("k-1"), vera, "execute", "kernels")
    assert authz.is_authorized(_Handler("k-1"), vera, "read", "kernels")
    assert not authz.is_authorized(_Handler("k-1"), olga, "execute", "kernels")
    assert authz.is_authorized(_Handler("k-2"), olga, "execute", "kernels")
    assert not authz.is_authorized(_Handler("k-1"), vera, "write", "kernels")
    for resource in ("contents", "sessions", "kernelspecs", "terminals", "api", "config"):
        assert not authz.is_authorized(_Handler("k-1"), vera, "read", resource)
    UsersFile(provider.users_path).remove("vera")
    assert not authz.is_authorized(_Handler("k-1"), vera, "execute", "kernels")


def test_rate_limit_counts_failures_per_name_and_address():
    failures = voila_auth._Failures()
    keys = ["ip:1.2.3.4", "name:vera"]
    for _ in range(4):
        failures.record(keys)
    assert failures.wait(keys[1:], 5, 60.0) == 0
    failures.record(keys)
    assert 59 < failures.wait(keys[1:], 5, 60.0) <= 60
    assert failures.wait(["name:olga"], 5, 60.0) == 0
    failures.clear("name:vera")
    assert failures.wait(keys[1:], 5, 60.0) == 0
    assert failures.wait(keys[:1], 5, 60.0) > 0


def test_login_page_template_renders(tmp_path):
    """login.html with the namespace the handlers give it (its imports resolve, the forms
    post to /login with the XSRF field, a message is shown escaped)."""
    import jinja2

    from twinbench.app import SOURCE_TEMPLATE

    env = jinja2.Environment(loader=jinja2.FileSystemLoader([str(SOURCE_TEMPLATE)]),
                             autoescape=True, extensions=["jinja2.ext.i18n"])
    env.install_null_translations()
    html = env.get_template("login.html").render(
        base_url="/", next="/?a=1&b=2", message={"error": "<b>Wrong</b>"}, dark=False,
        static_base="/voila/templates/twinbench/static",
        xsrf_form_html=lambda: '<input type="hidden" name="_xsrf" value="X">',
        password_available=True, token_available=True)
    assert 'action="/login?next=/%3Fa%3D1%26b%3D2"' in html
    assert html.count('name="_xsrf"') == 2
    assert "&lt;b&gt;Wrong&lt;/b&gt;" in html and 'role="alert"' in html
    assert 'name="username"' in html and 'name="password"' in html and 'name="token"' in html
    assert "twinbench-header" in html and "://" not in html.replace("http://www.w3.org", "")


def test_a_v1_frame_with_a_forged_offset_table_is_refused_at_once():
    """The offset count comes from the page: one claiming billions must not hold the loop."""
    import time as _time

    from jupyter_server.services.kernels.connection.base import serialize_msg_to_ws_v1

    good = serialize_msg_to_ws_v1([json.dumps({"msg_type": "comm_msg"}).encode(), b"{}",
                                   b"{}", b"{}"], "shell")
    stamped = voila_auth.stamp_ws_message(good, voila_auth.V1_PROTOCOL, "vera", "viewer")
    assert b'"username": "vera"' in stamped
    for forged in ((2**31).to_bytes(8, "little") + b"\0" * 8,
                   (3).to_bytes(8, "little") + (10**9).to_bytes(8, "little") * 3,
                   good[:8] + good[16:24] + good[8:16] + good[24:]):  # offsets out of order
        t0 = _time.monotonic()
        with pytest.raises(ValueError):
            voila_auth.stamp_ws_message(forged, voila_auth.V1_PROTOCOL, "vera", "viewer")
        assert _time.monotonic() - t0 < 0.1
