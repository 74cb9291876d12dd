"""Who may look and who may act: users, roles and passwords for twinbench apps.

A twinbench app served by Voila can require a sign-in. Each account has one role:

============  ===========================================================================
role          may
============  ===========================================================================
viewer        see everything; change nothing
operator      write allow-listed tags within their limits (``"write"``), run scenarios
              (``"scenario"``)
engineer      what an operator may, and change limits, rules and the tag map
              (``"configure"``)
============  ===========================================================================

Accounts live in a users file (JSON, mode 0600) holding salted scrypt hashes, never a password:
see :class:`UsersFile` and ``twinbench users add|list|remove``. Sign-in with Voila's access token
is the other option; whoever signs in with it gets the role in ``TWINBENCH_TOKEN_ROLE``.

The Voila server stamps, on every message a page sends to its kernel, the signed-in user's name
and role into the message header (``header["username"]`` and ``header[ROLE_HEADER]``), over
whatever the page put there; the kernel reads them from
``get_ipython().kernel.get_parent()["header"]``. The server side (Jupyter Server's identity
provider, authorizer and kernel websocket connection) is in :mod:`twinbench._voila_auth`, which
only Voila loads: this module imports nothing of Jupyter Server or Tornado.

Examples
--------
>>> allowed("operator", "write"), allowed("viewer", "write")
(True, False)
>>> verify_password("correct horse", hash_password("correct horse"))
True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ENV_AUTH",
    "ENV_TOKEN_ROLE",
    "ENV_USERS",
    "PERMISSIONS",
    "ROLES",
    "ROLE_HEADER",
    "UsersFile",
    "allowed",
    "auth_mode",
    "default_users_path",
    "generate_password",
    "hash_password",
    "users_file",
    "verify_password",
]

#: The roles, least to most allowed.
ROLES = ("viewer", "operator", "engineer")
#: What each role may do, beyond looking.
PERMISSIONS: Mapping[str, frozenset[str]] = {
    "viewer": frozenset(),
    "operator": frozenset({"write", "scenario"}),
    "engineer": frozenset({"write", "scenario", "configure"}),
}
#: Every action a permission can name.
ACTIONS = frozenset().union(*PERMISSIONS.values())

#: Sign-in of the Voila server, inherited by its kernels: ``"users"``, ``"token"``, or unset /
#: ``"none"`` (no sign-in: the kernel must not trust a role in a message header).
ENV_AUTH = "TWINBENCH_AUTH"
#: The users file's path.
ENV_USERS = "TWINBENCH_USERS"
#: The role of whoever signs in with the access token (default ``"viewer"``).
ENV_TOKEN_ROLE = "TWINBENCH_TOKEN_ROLE"
#: A file holding the access token, read by the Voila server at start-up (``voila --token=...``
#: works too, but shows the token in the process list). Its kernels inherit the variable, not
#: the token: :class:`twinbench.app.VoilaServer` deletes the file once the server has read it.
ENV_TOKEN_FILE = "TWINBENCH_TOKEN_FILE"
#: The message header field holding the signed-in user's role (the name is in ``"username"``).
ROLE_HEADER = "twinbench_role"
#: The values of :data:`ENV_AUTH`.
AUTH_MODES = ("none", "users", "token")

MIN_PASSWORD_LENGTH = 8
# A bound on what one sign-in costs to check: scrypt is as slow for a long password as for a
# short one, but the form must not accept megabytes.
MAX_PASSWORD_LENGTH = 1024
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")

# scrypt at n=2**14, r=8, p=1 (16 MiB, ~50 ms): the interactive-login parameters of the scrypt
# paper and of Python's documentation.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_SALT_BYTES, _KEY_BYTES = 16, 32
# What a stored hash may ask for: a tampered users file must not make a sign-in take gigabytes.
_MAX_N, _MAX_R, _MAX_P = 2**20, 32, 16


def allowed(role: str | None, action: str) -> bool:
    """Whether `role` may do `action` (``"write"``, ``"scenario"`` or ``"configure"``).

    An unknown or missing role may do nothing.

    Raises
    ------
    ValueError
        If `action` is not one of the actions above (a typo must not silently deny, or allow).

    Examples
    --------
    >>> allowed("engineer", "configure"), allowed("operator", "configure"), allowed(None, "write")
    (True, False, False)
    """
    if action not in ACTIONS:
        raise ValueError(f"action: expected one of {sorted(ACTIONS)}, got {action!r}")
    return action in PERMISSIONS.get(role, frozenset()) if isinstance(role, str) else False


def auth_mode(env: Mapping[str, str] | None = None) -> str:
    """The sign-in mode in `env` (default ``os.environ``): ``"users"``, ``"token"`` or
    ``"none"``.

    An unrecognised value counts as sign-in on (``"users"``): a typo must not open the app.

    Examples
    --------
    >>> auth_mode({}), auth_mode({"TWINBENCH_AUTH": "token"}), auth_mode({"TWINBENCH_AUTH": "yes"})
    ('none', 'token', 'users')
    """
    env = os.environ if env is None else env
    value = env.get(ENV_AUTH, "").strip().lower()
    if value in ("", "none"):
        return "none"
    return value if value in AUTH_MODES else "users"


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"name: expected 1 to 64 of the characters A-Z a-z 0-9 _ . @ -, "
                         f"got {name!r}")
    return name


def _check_role(role: object) -> str:
    if role not in ROLES:
        raise ValueError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")
    return str(role)


def _check_password(password: object) -> str:
    # The error never shows the password, not even its length.
    if not isinstance(password, str):
        raise TypeError(f"password: expected a str, got {type(password).__name__}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password: expected at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"password: expected at most {MAX_PASSWORD_LENGTH} characters")
    return password


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    """A salted scrypt hash of `password`, as ``scrypt$N$r$p$<salt>$<hash>`` (base64).

    Each call draws a new 16-byte salt: the same password hashes differently each time.

    Raises
    ------
    ValueError
        If `password` has fewer than 8 (or more than 1024) characters.

    Examples
    --------
    >>> h = hash_password("correct horse")
    >>> h.split("$")[:4]
    ['scrypt', '16384', '8', '1']
    >>> h == hash_password("correct horse")
    False
    """
    _check_password(password)
    salt = secrets.token_bytes(_SALT_BYTES)
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R,
                         p=_SCRYPT_P, dklen=_KEY_BYTES)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, hashed: str) -> bool:
    """Whether `password` matches `hashed` (from :func:`hash_password`).

    The comparison takes the same time wherever the two differ. A malformed `hashed`, or one
    asking scrypt for more than 2**20 / 32 / 16 (N / r / p), matches nothing.

    Examples
    --------
    >>> h = hash_password("correct horse")
    >>> verify_password("correct horse", h), verify_password("correct horsE", h)
    (True, False)
    >>> verify_password("correct horse", "plain text")
    False
    """
    if not isinstance(password, str) or not isinstance(hashed, str):
        return False
    parts = hashed.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
    except ValueError:  # binascii.Error is one
        return False
    if not (2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P
            and salt and 16 <= len(expected) <= 64):
        return False
    if len(password) > MAX_PASSWORD_LENGTH:
        return False
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                         dklen=len(expected), maxmem=128 * r * n + 2**20)
    return hmac.compare_digest(key, expected)


def generate_password(nbytes: int = 15) -> str:
    """A random password: `nbytes` random bytes, URL-safe base64 (20 characters by default).

    Examples
    --------
    >>> len(generate_password())
    20
    """
    return secrets.token_urlsafe(nbytes)


def default_users_path(env: Mapping[str, str] | None = None) -> Path:
    """The users file: ``$TWINBENCH_USERS``, else ``~/.config/twinbench/users.json``.

    Examples
    --------
    >>> default_users_path({"TWINBENCH_USERS": "/srv/app/users.json"})
    PosixPath('/srv/app/users.json')
    """
    env = os.environ if env is None else env
    if env.get(ENV_USERS):
        return Path(env[ENV_USERS]).expanduser()
    return Path("~/.config/twinbench/users.json").expanduser()


class UsersFile:
    """The accounts of a twinbench app: a JSON file of names, roles and password hashes.

    The file is read on every call (a change made by ``twinbench users`` takes effect at the
    next sign-in) and written atomically (a temporary file renamed over it) with mode 0600. It
    holds ``{"version": 1, "users": {name: {"role": ..., "password": "scrypt$..."}}}``. A
    file that does not exist has no users; :meth:`add` creates it (and its folder, mode 0700).

    Parameters
    ----------
    path : path
        The file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> users = UsersFile(pathlib.Path(tempfile.mkdtemp()) / "users.json")
    >>> users.add("alice", "correct horse", "operator")
    >>> users.names(), users.role("alice")
    (['alice'], 'operator')
    >>> users.verify("alice", "correct horse"), users.verify("alice", "wrong horse")
    ('operator', None)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise TypeError(f"path: expected a file path, got {path!r}")
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"UsersFile({os.fspath(self.path)!r})"

    # -- reading ------------------------------------------------------------------------------

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{self.path}: not a twinbench users file (invalid JSON: "
                             f"{exc.msg} at line {exc.lineno})") from None
        users = data.get("users") if isinstance(data, dict) else None
        if not isinstance(users, dict):
            raise ValueError(f"{self.path}: not a twinbench users file (expected an object "  # noqa: TRY004
                             f"with 'users')")
        good: dict[str, dict[str, str]] = {}
        for name, entry in users.items():
            # An entry that a hand edit broke signs nobody in; the others still work.
            if (isinstance(name, str) and _NAME.fullmatch(name) and isinstance(entry, dict)
                    and entry.get("role") in ROLES and isinstance(entry.get("password"), str)):
                good[name] = {"role": entry["role"], "password": entry["password"]}
        return good

    def names(self) -> list[str]:
        """The account names, sorted."""
        return sorted(self._load())

    def role(self, name: str) -> str | None:
        """`name`'s role, or None if there is no such account."""
        entry = self._load().get(name) if isinstance(name, str) else None
        return entry["role"] if entry else None

    def entries(self) -> dict[str, dict[str, str]]:
        """``{name: {"role": ..., "password": <hash>}}`` (hashes only)."""
        return self._load()

    def verify(self, name: str, password: str) -> str | None:
        """`name`'s role if `password` is theirs, else None.

        An unknown name costs the same scrypt work as a known one, so the time taken does not
        tell which names exist.
        """
        entry = self._load().get(name) if isinstance(name, str) else None
        hashed = entry["password"] if entry else _dummy_hash()
        ok = verify_password(password, hashed)
        return entry["role"] if ok and entry else None

    # -- writing ------------------------------------------------------------------------------

    def add(self, name: str, password: str, role: str) -> None:
        """Add `name` with `password` and `role`, replacing an account of that name.

        Raises
        ------
        ValueError
            For a name outside ``[A-Za-z0-9_.@-]{1,64}``, an unknown role or a password of
            fewer than 8 characters.
        """
        _check_name(name)
        _check_role(role)
        hashed = hash_password(password)
        users = self._load()
        users[name] = {"role": role, "password": hashed}
        self._save(users)

    def remove(self, name: str) -> None:
        """Remove `name`.

        Raises
        ------
        KeyError
            If there is no such account.
        """
        users = self._load()
        if name not in users:
            raise KeyError(f"name: no user {name!r} in {self.path}")
        del users[name]
        self._save(users)

    def _save(self, users: Mapping[str, Mapping[str, str]]) -> None:
        folder = self.path.parent
        if not folder.exists():
            folder.mkdir(parents=True, mode=0o700)
        data = {"version": 1, "users": {n: dict(users[n]) for n in sorted(users)}}
        # mkstemp creates the file 0600: the hashes are never readable by others, not even
        # for the moment before the rename.
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


def users_file(path: str | os.PathLike[str] | None = None) -> UsersFile:
    """The :class:`UsersFile` at `path` (default :func:`default_users_path`).

    Examples
    --------
    >>> users_file("/tmp/app-users.json")
    UsersFile('/tmp/app-users.json')
    """
    return UsersFile(default_users_path() if path is None else path)


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    # A hash of a random password with the same parameters as real ones, made once.
    if not _DUMMY:
        _DUMMY.append(hash_password(generate_password()))
    return _DUMMY[0]


def __getattr__(name: str) -> Any:
    # The Jupyter Server classes, for `--Voila.identity_provider_class=twinbench.auth.…`: loaded
    # on first use only (importing Jupyter Server here would make `import twinbench.auth` heavy).
    if name in ("TwinbenchIdentityProvider", "TwinbenchAuthorizer",
                "TwinbenchKernelConnection"):
        from twinbench import _voila_auth

        return getattr(_voila_auth, name)
    raise AttributeError(f"module 'twinbench.auth' has no attribute {name!r}")
