"""Sign-in for twinbench apps in Voila: Jupyter Server's identity provider, authorizer and
kernel websocket connection.

Only the Voila server imports this module (it needs Jupyter Server, Tornado and Voila); what the
rest of twinbench needs is in :mod:`twinbench.auth`. :func:`twinbench.app.voila_command` passes::

    --Voila.identity_provider_class=twinbench._voila_auth.TwinbenchIdentityProvider
    --Voila.authorizer_class=twinbench._voila_auth.TwinbenchAuthorizer
    --Voila.kernel_websocket_connection_class=twinbench._voila_auth.TwinbenchKernelConnection
    --VoilaKernelManager.default_env_variables=TWINBENCH_AUTH=<users|token>

with ``TWINBENCH_AUTH`` also in the server's environment (the identity provider refuses to
start without it: kernels, preheated ones included, read it to know that roles apply).

* :class:`TwinbenchIdentityProvider` signs people in: name and password against the users file
  (``TWINBENCH_USERS``), or Voila's access token (``--token``, or ``TWINBENCH_TOKEN_FILE``), which
  gives the role in ``TWINBENCH_TOKEN_ROLE``. It serves the twinbench login page (``login.html``
  of the Voila template), ``/logout`` and ``/twinbench/whoami``.
* :class:`TwinbenchAuthorizer` lets a signed-in user do what a Voila page needs (read and talk
  to the kernel of their own page) and nothing else.
* :class:`TwinbenchKernelConnection` stamps the signed-in user's name and role into the header of
  every message a page sends to its kernel, over whatever the page wrote there. Jupyter Server
  then signs the message with the kernel's key, which the page never sees: the kernel can trust
  ``header["username"]`` and ``header["twinbench_role"]``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import struct
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.auth.identity import IdentityProvider, User
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.services.kernels.connection.base import (
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from jupyter_server.utils import url_path_join
from tornado import web
from traitlets import Float, Int, Unicode, default, validate
from voila.voila_identity_provider import VoilaLoginHandler

from twinbench.auth import (
    AUTH_MODES,
    ENV_AUTH,
    ENV_TOKEN_FILE,
    ENV_TOKEN_ROLE,
    MAX_PASSWORD_LENGTH,
    ROLE_HEADER,
    ROLES,
    UsersFile,
    _dummy_hash,
    auth_mode,
    default_users_path,
    verify_password,
)

__all__ = ["TwinbenchAuthorizer", "TwinbenchIdentityProvider", "TwinbenchKernelConnection",
           "TwinbenchUser", "stamp_ws_message"]

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
TEMPLATE = "twinbench"


@dataclass
class TwinbenchUser(User):
    """A signed-in user: Jupyter Server's :class:`User` with a role and how they signed in
    (``"users"``: the users file; ``"token"``: the access token)."""

    role: str | None = None
    source: str = "users"
    #: The credential the session was made with (see _stamp): a session ends when it changes.
    stamp: str = ""


def _stamp(text: str) -> str:
    # What a login cookie carries of the credential it was issued for: when the password (or
    # the token) changes, cookies issued before no longer match and their sessions end.
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


class _Failures:
    """Failed sign-ins per key (a name, an address) in a sliding window."""

    def __init__(self) -> None:
        self._times: dict[str, deque[float]] = {}

    def _recent(self, key: str, window: float) -> deque[float]:
        times = self._times.get(key)
        if times is None:
            return deque()
        cutoff = time.monotonic() - window
        while times and times[0] < cutoff:
            times.popleft()
        if not times:
            del self._times[key]
        return times

    def wait(self, keys: list[str], limit: int, window: float) -> float:
        """Seconds until `keys` may try again (0 = now)."""
        wait = 0.0
        for key in keys:
            times = self._recent(key, window)
            if len(times) >= limit:
                wait = max(wait, times[-limit] + window - time.monotonic())
        return max(wait, 0.0)

    def record(self, keys: list[str], window: float = 3600.0) -> None:
        now = time.monotonic()
        if len(self._times) > 10_000:  # a flood of made-up names must not grow this forever
            for key in list(self._times):
                self._recent(key, window)  # old entries only: live lockouts stay
            while len(self._times) > 10_000:  # still too many: the oldest keys go
                del self._times[min(self._times, key=lambda k: self._times[k][-1])]
        for key in keys:
            self._times.setdefault(key, deque(maxlen=64)).append(now)

    def clear(self, key: str) -> None:
        self._times.pop(key, None)

    def forget_last(self, keys: list[str]) -> None:
        """Take back the attempt :meth:`record` counted last for each of `keys`."""
        for key in keys:
            times = self._times.get(key)
            if times:
                times.pop()
                if not times:
                    del self._times[key]


class TwinbenchIdentityProvider(IdentityProvider):
    """Sign-in with the users file or the access token.

    The mode comes from ``TWINBENCH_AUTH`` (``"users"``, the default, or ``"token"``) and is
    written back into the server's environment, so that every kernel it starts knows sign-in is
    on (a kernel that does not know would trust any role in a header; a preheated kernel starts
    before this provider exists, and gets the variable from
    ``--VoilaKernelManager.default_env_variables``, which :func:`twinbench.app.voila_command`
    passes). It refuses to start when the mode cannot work: no users file in ``"users"`` mode,
    no token in ``"token"`` mode, ``TWINBENCH_AUTH=none`` in the server's environment (its
    kernels would not check roles), or a kernel websocket connection that does not stamp the
    messages.
    """

    users_path = Unicode(config=True, help="The users file (default: $TWINBENCH_USERS, else "
                                           "~/.config/twinbench/users.json).")
    token_role = Unicode(config=True, help="The role of whoever signs in with the token "
                                           "(default: $TWINBENCH_TOKEN_ROLE, else viewer).")
    mode = Unicode(config=True, help="'users' (name and password, and the token if there is "
                                     "one) or 'token' (the token only); default "
                                     "$TWINBENCH_AUTH, else 'users'.")
    failure_delay = Float(1.0, config=True,
                          help="Seconds a refused sign-in waits before its answer.")
    max_failures = Int(5, config=True,
                       help="Refused sign-ins per name (and 4x that per address) within "
                            "failure_window before further tries are refused unchecked.")
    failure_window = Float(300.0, config=True, help="The window of max_failures, in seconds.")

    @default("users_path")
    def _users_path_default(self) -> str:
        return os.fspath(default_users_path())

    @default("token_role")
    def _token_role_default(self) -> str:
        return os.environ.get(ENV_TOKEN_ROLE, "").strip() or "viewer"

    @validate("token_role")
    def _valid_token_role(self, proposal: dict[str, Any]) -> str:
        if proposal["value"] not in ROLES:
            raise ValueError(f"{ENV_TOKEN_ROLE}: expected one of {', '.join(ROLES)}, got "
                             f"{proposal['value']!r}")
        return proposal["value"]

    @default("mode")
    def _mode_default(self) -> str:
        mode = auth_mode()
        return "users" if mode == "none" else mode

    @validate("mode")
    def _valid_mode(self, proposal: dict[str, Any]) -> str:
        if proposal["value"] not in AUTH_MODES[1:]:
            raise ValueError(f"{ENV_AUTH}: expected 'users' or 'token' with this identity "
                             f"provider, got {proposal['value']!r}")
        return proposal["value"]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        inherited = os.environ.get(ENV_AUTH)
        if inherited is None:
            # Voila's preheated kernels start from the server's environment before this
            # provider exists: without the variable they would not check roles at all.
            raise ValueError(f"{ENV_AUTH} is not in the server's environment, but sign-in is "
                             f"on: its kernels would not check roles; start Voila with "
                             f"{ENV_AUTH}={self.mode} (twinbench.app.VoilaServer does)")
        if auth_mode({ENV_AUTH: inherited}) == "none":
            raise ValueError(f"{ENV_AUTH}={inherited!r} in the server's environment, but sign-in "
                             f"is on: its kernels would not check roles; set {ENV_AUTH}="
                             f"{self.mode} (twinbench.app.VoilaServer does)")
        # The token from a file rather than the environment, which kernels inherit.
        token_file = os.environ.get(ENV_TOKEN_FILE)
        if token_file and not self.token:
            try:
                self.token = Path(token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"{ENV_TOKEN_FILE}: cannot read the token from {token_file}: "
                                 f"{exc.strerror}") from None
        self._failures = _Failures()
        self._users = UsersFile(self.users_path)
        self._cache: tuple[Any, dict[str, dict[str, str]]] = (None, {})
        if self.mode == "users":
            if not self._users.path.is_file():
                raise ValueError(
                    f"{ENV_AUTH}=users: the users file {self._users.path} does not exist; add "
                    f"accounts with `twinbench users add NAME --role ROLE --file "
                    f"{self._users.path}`")
            self._entries()  # a broken file stops the server now, not at the first sign-in
            mode = self._users.path.stat().st_mode
            if mode & 0o077:
                self.log.warning("the users file %s can be read by other accounts (mode %o): "
                                 "chmod 600 it", self._users.path, mode & 0o777)
        elif not self.token:
            raise ValueError(f"{ENV_AUTH}=token: no token (pass --token=... to voila, or name "
                             f"a file holding it in {ENV_TOKEN_FILE})")
        os.environ[ENV_AUTH] = self.mode
        os.environ[ENV_TOKEN_ROLE] = self.token_role
        self._check_connection_class()

    def _check_connection_class(self) -> None:
        # Without the stamping connection, a header's role would be whatever the page wrote:
        # refuse to serve rather than serve forgeable roles.
        cls = getattr(self.parent, "kernel_websocket_connection_class", None)
        if cls is not None and not (isinstance(cls, type)
                                    and issubclass(cls, TwinbenchKernelConnection)):
            raise ValueError(
                "kernel_websocket_connection_class: expected twinbench._voila_auth."
                f"TwinbenchKernelConnection (or a subclass) with this identity provider, got "
                f"{getattr(cls, '__qualname__', cls)!r}: pass --Voila."
                "kernel_websocket_connection_class=twinbench._voila_auth."
                "TwinbenchKernelConnection")

    # -- the users file, read again when it changes -------------------------------------------

    def _entries(self) -> dict[str, dict[str, str]]:
        if self.mode != "users":
            return {}
        try:
            st = self._users.path.stat()
            key: Any = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        if key != self._cache[0]:
            self._cache = (key, self._users.entries() if key is not None else {})
        return self._cache[1]

    def role_of(self, user: Any) -> str | None:
        """`user`'s role now (None: no longer signed in: removed, or the password, or the
        token, changed since they signed in)."""
        if not isinstance(user, TwinbenchUser):
            return None
        if user.source == "token":
            ok = bool(self.token) and hmac.compare_digest(user.stamp, _stamp(self.token))
            return self.token_role if ok else None
        entry = self._entries().get(user.username)
        if entry is None or not hmac.compare_digest(user.stamp, _stamp(entry["password"])):
            return None
        return entry["role"]

    # -- cookies ------------------------------------------------------------------------------

    @property
    def auth_enabled(self) -> bool:
        return True

    @property
    def login_available(self) -> bool:
        return True

    def user_to_cookie(self, user: User) -> str:
        return json.dumps({"username": user.username, "source": getattr(user, "source", ""),
                           "stamp": getattr(user, "stamp", "")})

    def user_from_cookie(self, cookie_value: str) -> User | None:
        data = json.loads(cookie_value)
        if not isinstance(data, dict):
            return None
        name, source, stamp = data.get("username"), data.get("source"), data.get("stamp")
        if not isinstance(name, str) or not isinstance(stamp, str) \
                or source not in ("users", "token"):
            return None
        user = TwinbenchUser(username=name, source=source, stamp=stamp,
                             display_name="token user" if source == "token" else "")
        user.role = self.role_of(user)
        return user if user.role is not None else None

    def _token_user(self) -> TwinbenchUser:
        # Not a name from the users file: those never hold ':'.
        return TwinbenchUser(username=f"token:{secrets.token_hex(4)}", display_name="token user",
                             role=self.token_role, source="token",
                             stamp=_stamp(self.token or ""))

    def generate_anonymous_user(self, handler: web.RequestHandler) -> User:
        # Called for a request with the right ?token= and no login cookie.
        return self._token_user()

    # -- signing in ---------------------------------------------------------------------------

    def check_password(self, name: str, password: str) -> TwinbenchUser | None:
        """The user `name` if `password` is theirs (blocking: ~50 ms of scrypt)."""
        if self.mode != "users" or len(password) > MAX_PASSWORD_LENGTH:
            return None
        entry = self._entries().get(name)
        # an unknown name costs the same scrypt work: the time taken does not tell names apart
        ok = verify_password(password, entry["password"] if entry else _dummy_hash())
        if not (ok and entry):
            return None
        return TwinbenchUser(username=name, role=entry["role"], source="users",
                             stamp=_stamp(entry["password"]))

    def check_token(self, token: str) -> TwinbenchUser | None:
        if self.token and token and hmac.compare_digest(token.encode(), self.token.encode()):
            return self._token_user()
        return None

    def process_login_form(self, handler: web.RequestHandler) -> User | None:
        """The user the form signs in, or None (Jupyter Server's synchronous API; the
        twinbench login handler uses :meth:`sign_in`, which adds the rate limit)."""
        token = handler.get_argument("token", default="")
        if token:
            return self.check_token(token)
        return self.check_password(handler.get_argument("username", default="").strip(),
                                   handler.get_argument("password", default=""))

    async def sign_in(self, handler: web.RequestHandler) -> tuple[User | None, str | None]:
        """Check the login form: ``(user, None)``, or ``(None, message)`` after the failure
        delay. Refused sign-ins are logged with the name when it is an account's (the name
        field sometimes holds a mistyped password), never with the password."""
        token = handler.get_argument("token", default="")
        name = handler.get_argument("username", default="").strip()
        password = handler.get_argument("password", default="")
        address = handler.request.remote_ip or "?"
        keys = [f"ip:{address}"] + ([] if token else [f"name:{name}"])
        limit = self.max_failures
        wait = max(self._failures.wait(keys[1:], limit, self.failure_window),
                   self._failures.wait(keys[:1], 4 * limit, self.failure_window))
        known = name in self._entries()
        who = "the token" if token else (repr(name) if known else "an unknown name")
        if wait > 0:
            self.log.warning("sign-in refused for %s from %s: too many failures", who, address)
            return None, (f"Too many failed sign-ins. Try again in {max(1, round(wait))} s.")
        # counted before the check: parallel tries must not all pass the limit above
        self._failures.record(keys, self.failure_window)
        if token:
            user = self.check_token(token)
        elif name and password:
            # scrypt off the event loop: the server keeps serving while it works
            user = await asyncio.to_thread(self.check_password, name, password)
        else:
            user = None
        if user is None:
            # an unknown name is not shown: it is often a password typed in the wrong field
            self.log.warning("sign-in refused for %s from %s", who, address)
            await asyncio.sleep(self.failure_delay)
            return None, ("Wrong access token." if token
                          else "Wrong name or password." if name and password
                          else "Enter your name and password.")
        if not token:
            self._failures.clear(f"name:{name}")
        self._failures.forget_last(keys[:1])  # a success is no failure of its address
        self.log.info("signed in: %s (%s, %s) from %s", user.username,
                      getattr(user, "role", None), getattr(user, "source", None), address)
        return user, None

    # -- pages --------------------------------------------------------------------------------

    def get_handlers(self) -> list[tuple[str, object]]:
        # Ours whatever login_handler_class Voila passed (its VoilaLoginHandler would render
        # Jupyter Server's login page). Voila adds these without its base_url: add it here.
        base = getattr(self.parent, "base_url", None) or "/"
        return [(url_path_join(base, "/login"), TwinbenchLoginHandler),
                (url_path_join(base, "/logout"), TwinbenchLogoutHandler),
                (url_path_join(base, "/twinbench/whoami"), WhoAmIHandler)]


def _template_env(handler: JupyterHandler) -> jinja2.Environment:
    """Voila's template environment, or one on twinbench's own template when Voila's does not
    hold login.html (an app served with another template)."""
    voila_env = handler.settings.get("voila_jinja2_env")
    if voila_env is not None:
        try:
            voila_env.get_template("login.html")
            return voila_env
        except jinja2.TemplateNotFound:
            pass
    env = handler.settings.get("twinbench_jinja2_env")
    if env is None:
        from twinbench.app import SOURCE_TEMPLATE, template_dir

        folder = template_dir()
        if folder is None or not (folder / "login.html").is_file():
            folder = SOURCE_TEMPLATE  # an installed copy older than the sign-in page
        env = jinja2.Environment(loader=jinja2.FileSystemLoader([os.fspath(folder)]),
                                 autoescape=True, extensions=["jinja2.ext.i18n"])
        env.install_null_translations(newstyle=False)
        handler.settings["twinbench_jinja2_env"] = env
    return env


class _PageMixin:
    """The twinbench login page, rendered from the Voila template's ``login.html``."""

    def render_login(self, message: dict[str, str] | None = None, status: int = 200) -> None:
        handler: Any = self
        voila = handler.settings.get("voila")
        config = getattr(voila, "voila_configuration", None)
        theme = getattr(config, "theme", "light") or "light"
        base_url = handler.base_url
        provider = handler.identity_provider
        next_url = handler.get_argument("next", default=base_url)
        if not isinstance(next_url, str) or not next_url.startswith("/") \
                or next_url.startswith("//"):
            next_url = base_url
        handler.set_status(status)
        handler.set_header("Cache-Control", "no-store")
        template = _template_env(handler).get_template("login.html")
        handler.write(template.render(
            base_url=base_url, next=next_url, message=message, theme=theme,
            dark=theme in ("dark", "JupyterLab Dark"),
            static_base=url_path_join(base_url, "voila/templates", TEMPLATE, "static"),
            xsrf_form_html=handler.xsrf_form_html,
            password_available=getattr(provider, "mode", "users") == "users",
            token_available=bool(handler.token)))


class TwinbenchLoginHandler(_PageMixin, VoilaLoginHandler):
    """``GET /login``: the sign-in page; ``POST /login``: sign in (name and password, or the
    access token), then back to ``next``."""

    @allow_unauthenticated
    def get(self) -> None:
        if self.current_user:
            self._redirect_safe(self.get_argument("next", default=self.base_url))
        else:
            self.render_login()

    @allow_unauthenticated
    async def post(self) -> None:
        provider: TwinbenchIdentityProvider = self.identity_provider  # type: ignore[assignment]
        user, message = await provider.sign_in(self)
        if user is None:
            status = 429 if message and message.startswith("Too many") else 401
            self.render_login({"error": message or "Sign-in refused."}, status)
            return
        self.current_user = user
        provider.set_login_cookie(self, user)
        self._redirect_safe(self.get_argument("next", default=self.base_url))


class TwinbenchLogoutHandler(_PageMixin, JupyterHandler):
    """``GET /logout``: sign out, and show the sign-in page again."""

    @allow_unauthenticated
    def get(self) -> None:
        user = self.current_user
        if user:
            self.log.info("signed out: %s", user.username)
        self.identity_provider.clear_login_cookie(self)
        self.render_login({"info": "You are signed out."})


class WhoAmIHandler(JupyterHandler):
    """``GET /twinbench/whoami``: the signed-in user's name and role, as JSON (for the page's
    header)."""

    @web.authenticated
    def get(self) -> None:
        user = self.current_user
        provider = self.identity_provider
        role = provider.role_of(user) if isinstance(provider, TwinbenchIdentityProvider) \
            else getattr(user, "role", None)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"username": user.username, "display_name": user.display_name,
                                "role": role, "source": getattr(user, "source", None)}))


class TwinbenchAuthorizer(Authorizer):
    """What a signed-in user may do: read and talk to the kernel of their own page, nothing
    else (Voila's pages, static files and the sign-in pages do not ask the authorizer).

    A kernel becomes a user's the first time a user's page uses it; another user is refused
    (a kernel id is random and only in its page, so this is a second lock, not the first).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._owners: dict[str, tuple[str, str]] = {}

    def is_authorized(self, handler: web.RequestHandler, user: User, action: str,
                      resource: str) -> bool:
        provider = self.identity_provider
        role = provider.role_of(user) if isinstance(provider, TwinbenchIdentityProvider) \
            else getattr(user, "role", None)
        if role not in ROLES:
            self.log.warning("refused %s on %s: %s has no role", action, resource,
                             getattr(user, "username", user))
            return False
        if resource == "kernels" and action in ("read", "execute"):
            kwargs = getattr(handler, "path_kwargs", None) or {}
            args = getattr(handler, "path_args", None) or []
            kernel_id = kwargs.get("kernel_id") or (args[0] if args else None)
            return bool(kernel_id) and self._claim(handler, str(kernel_id), user)
        self.log.warning("refused %s on %s for %s", action, resource, user.username)
        return False

    def _claim(self, handler: Any, kernel_id: str, user: User) -> bool:
        who = (getattr(user, "source", "users"), user.username)
        owner = self._owners.setdefault(kernel_id, who)
        if owner != who:
            self.log.warning("refused kernel %s to %s: it is another user's page's", kernel_id,
                             user.username)
            return False
        if len(self._owners) > 64:  # forget kernels that are gone
            try:
                alive = set(handler.kernel_manager.list_kernel_ids())
            except Exception:  # noqa: BLE001 - no kernel manager: keep the claims
                return True
            for kid in [k for k in self._owners if k not in alive]:
                del self._owners[kid]
        return True


# -- stamping ---------------------------------------------------------------------------------

def _stamp_header(header: Any, username: str, role: str | None) -> dict[str, Any]:
    if not isinstance(header, dict):
        raise ValueError("a message header must be a JSON object")  # noqa: TRY004
    header["username"] = username
    if role is None:
        header.pop(ROLE_HEADER, None)
    else:
        header[ROLE_HEADER] = role
    return header


def _stamp_binary(ws_msg: bytes, username: str, role: str | None) -> bytes:
    # The legacy protocol's binary frames: 4-byte count, 4-byte offsets, JSON, then buffers.
    nbufs = struct.unpack("!i", ws_msg[:4])[0]
    if not 1 <= nbufs <= 4096 or len(ws_msg) < 4 * (nbufs + 1):
        raise ValueError("malformed binary message")
    offsets = list(struct.unpack("!" + "I" * nbufs, ws_msg[4:4 * (nbufs + 1)]))
    bufs = [ws_msg[start:stop] for start, stop in zip(offsets, offsets[1:] + [None])]
    msg = json.loads(bufs[0].decode("utf-8"))
    if not isinstance(msg, dict):
        raise ValueError("a message must be a JSON object")  # noqa: TRY004
    _stamp_header(msg.get("header"), username, role)
    bufs[0] = json.dumps(msg).encode("utf-8")
    new_offsets = [4 * (nbufs + 1)]
    for buf in bufs[:-1]:
        new_offsets.append(new_offsets[-1] + len(buf))
    return struct.pack("!" + "I" * (nbufs + 1), nbufs, *new_offsets) + b"".join(bufs)


def _check_v1_offsets(ws_msg: bytes) -> None:
    """Refuse a v1 frame whose offset table does not fit it, before jupyter_server reads the
    table: its count comes from the page, and a huge one holds the server's loop for minutes."""
    count = int.from_bytes(ws_msg[:8], "little")
    if not 2 <= count <= len(ws_msg) // 8 - 1:
        raise ValueError(f"a v1 message with {count} offsets in {len(ws_msg)} bytes")
    offsets = [int.from_bytes(ws_msg[8 * (i + 1):8 * (i + 2)], "little") for i in range(count)]
    if offsets != sorted(offsets) or offsets[0] < 8 * (count + 1) or offsets[-1] > len(ws_msg):
        raise ValueError("a v1 message whose offsets do not fit it")


def stamp_ws_message(ws_msg: str | bytes, subprotocol: str | None, username: str,
                     role: str | None) -> str | bytes:
    """`ws_msg` (a websocket message from a page to its kernel) with ``header["username"]`` set
    to `username` and ``header["twinbench_role"]`` to `role` (removed when `role` is None),
    whatever the page had put there.

    `subprotocol` is the websocket's: ``"v1.kernel.websocket.jupyter.org"`` (binary frames whose
    first part is the header) or anything else for the legacy protocol (JSON text, or binary
    frames with buffers).

    Raises
    ------
    ValueError
        If the message cannot be read (it must then be dropped, never passed on unstamped).

    Examples
    --------
    >>> msg = json.dumps({"channel": "shell", "header": {"msg_type": "comm_msg",
    ...                   "username": "admin", "twinbench_role": "engineer"}})
    >>> json.loads(stamp_ws_message(msg, "", "alice", "viewer"))["header"]
    {'msg_type': 'comm_msg', 'username': 'alice', 'twinbench_role': 'viewer'}
    """
    try:
        if subprotocol == V1_PROTOCOL:
            if not isinstance(ws_msg, bytes) or len(ws_msg) < 8:
                raise ValueError("a v1 message must be binary")
            _check_v1_offsets(ws_msg)
            channel, msg_list = deserialize_msg_from_ws_v1(ws_msg)
            if not msg_list:
                raise ValueError("a v1 message without a header")
            header = _stamp_header(json.loads(msg_list[0]), username, role)
            msg_list[0] = json.dumps(header).encode("utf-8")
            return serialize_msg_to_ws_v1(msg_list, channel)
        if isinstance(ws_msg, bytes):
            return _stamp_binary(ws_msg, username, role)
        msg = json.loads(ws_msg)
        if not isinstance(msg, dict):
            raise ValueError("a message must be a JSON object")  # noqa: TRY004
        _stamp_header(msg.get("header"), username, role)
        return json.dumps(msg)
    except (UnicodeDecodeError, struct.error, IndexError, TypeError) as exc:
        raise ValueError(f"unreadable message: {exc}") from None


class TwinbenchKernelConnection(ZMQChannelsWebsocketConnection):
    """Jupyter Server's kernel websocket connection that stamps who sent each message.

    Every message from the page has ``header["username"]`` and ``header["twinbench_role"]``
    overwritten with the signed-in user's name and current role (read again from the users
    file when it changes: a removed user's messages are dropped and their connection closed).
    A message that cannot be read is dropped.
    """

    _refused = False

    def handle_incoming_message(self, incoming_msg: Any) -> None:
        if not self.channels:
            super().handle_incoming_message(incoming_msg)  # closed: it ignores the message
            return
        handler = self.websocket_handler
        user = handler.current_user
        provider = handler.identity_provider
        if isinstance(provider, TwinbenchIdentityProvider):
            role = provider.role_of(user)
        else:  # another identity provider: only its users' own roles, if any
            role = getattr(user, "role", None)
            role = role if role in ROLES else None
        if user is None or (isinstance(provider, TwinbenchIdentityProvider) and role is None):
            if not self._refused:
                self._refused = True
                self.log.warning("%s is no longer signed in: their page's messages are dropped",
                                 getattr(user, "username", "an unknown user"))
                handler.close(1008, "signed out")
            return
        try:
            stamped = stamp_ws_message(incoming_msg, self.subprotocol, user.username, role)
        except ValueError as exc:
            self.log.warning("dropped a message from %s's page: %s", user.username, exc)
            return
        super().handle_incoming_message(stamped)
