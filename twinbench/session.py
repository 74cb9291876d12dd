"""Who is asking: the signed-in user and role behind the message a kernel is handling now.

In a twinbench app served with sign-in (``twinbench demo``, ``VoilaServer(auth=...)``), the
Voila server stamps every message a page sends to its kernel with the signed-in user's name and
role (``header["username"]`` and ``header["twinbench_role"]``, see :mod:`twinbench.auth`),
overwriting whatever the page put there; the kernel's HMAC signature covers the header, so a
page cannot forge it. This module reads that stamp in the kernel, so that the write path can
check the role of whoever clicked, not of whoever started the kernel.

Without sign-in (a notebook in JupyterLab, a script) there is no stamp to check: the identity
is the local account, with every permission.

Examples
--------
>>> from twinbench import session
>>> who = session.request_identity()  # outside a signed-in app: the local account
>>> who.signed_in, who.role, who.may("write")
(False, 'engineer', True)
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Identity", "auth_required", "identity_of", "request_identity", "watch"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    """A user and their role (None: unknown, which may do nothing).

    Attributes
    ----------
    user : str
    role : {"viewer", "operator", "engineer"} or None
    signed_in : bool
        Whether the identity came from a sign-in (the server's stamp) rather than the local
        account.
    """

    user: str
    role: str | None
    signed_in: bool

    def may(self, action: str) -> bool:
        """Whether this role permits `action` (``"write"``, ``"scenario"``, ``"configure"``)."""
        from twinbench.auth import allowed

        return self.role is not None and allowed(self.role, action)

    def __str__(self) -> str:
        return f"{self.user} ({self.role or 'no role'})"


def auth_required() -> bool:
    """Whether this process serves a signed-in app (the server set ``TWINBENCH_AUTH``)."""
    from twinbench.auth import auth_mode

    return auth_mode() != "none"


def _local() -> Identity:
    try:
        name = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        name = f"uid:{os.getuid()}" if hasattr(os, "getuid") else "local"
    return Identity(name, "engineer", False)


def _kernel() -> Any:
    with contextlib.suppress(Exception):
        from IPython import get_ipython

        shell = get_ipython()
        return getattr(shell, "kernel", None)
    return None


def identity_of(header: Any) -> Identity:
    """The identity a message header carries (what the server stamped), for a signed-in app."""
    from twinbench.auth import ROLE_HEADER, ROLES

    if not isinstance(header, dict):
        return Identity("unknown", None, True)
    user = header.get("username")
    role = header.get(ROLE_HEADER)
    return Identity(user if isinstance(user, str) and user else "unknown",
                    role if role in ROLES else None, True)


def request_identity() -> Identity:
    """Who sent the message the kernel is handling now (a click, a widget change).

    Call it in the widget's handler itself or in a task started from it (ipykernel keeps the
    message in a context variable that tasks inherit). In an app with sign-in, a message
    without the server's stamp has no role, so it may do nothing; without sign-in, the local
    account with every permission.
    """
    if not auth_required():
        return _local()
    kernel = _kernel()
    if kernel is None:
        return Identity("unknown", None, True)
    try:
        parent = kernel.get_parent()
    except Exception:  # noqa: BLE001 - no message being handled
        parent = {}
    return identity_of((parent or {}).get("header"))


_STAMPED = ("comm_msg", "comm_open", "comm_close", "comm_info_request")
_watchers: list[Callable[[Identity], None]] = []
_seen: Identity | None = None
_installed: Any = None


def watch(callback: Callable[[Identity], None]) -> Callable[[], None]:
    """Call ``callback(identity)`` when the page's user is first known and whenever it
    changes (from the stamps on the messages the page sends); returns a function that stops
    the watch.

    In an app without sign-in, the callback is called once at once with the local account.
    Errors in the callback are logged, never raised into the kernel's message handling.
    """
    if not callable(callback):
        raise TypeError(f"callback: expected a callable, got {type(callback).__name__}")
    if not auth_required():
        _call(callback, _local())
        return lambda: None
    _watchers.append(callback)
    _install()
    if _seen is not None:
        _call(callback, _seen)

    def stop() -> None:
        with contextlib.suppress(ValueError):
            _watchers.remove(callback)

    return stop


def _call(callback: Callable[[Identity], None], who: Identity) -> None:
    try:
        callback(who)
    except Exception:  # a broken watcher must not break the kernel's message handling
        _logger.exception("session watcher %r failed", callback)


def _observe(msg: Any) -> None:
    global _seen
    who = identity_of(msg.get("header") if isinstance(msg, dict) else None)
    if who.user == "unknown" and who.role is None:
        return  # not from a page (the kernel's own start-up, Voila executing the notebook)
    if who != _seen:
        _seen = who
        for callback in _watchers:
            _call(callback, who)


def _install() -> None:
    """Wrap the kernel's handlers of the messages a page sends (once per kernel)."""
    global _installed
    kernel = _kernel()
    if kernel is None or _installed is kernel:
        return
    handlers = getattr(kernel, "shell_handlers", None)
    if not isinstance(handlers, dict):
        return
    for msg_type in _STAMPED:
        original = handlers.get(msg_type)
        if original is None or getattr(original, "_twinbench_watch", False):
            continue

        def wrapped(stream: Any, ident: Any, msg: Any, _original: Any = original) -> Any:
            _observe(msg)
            return _original(stream, ident, msg)

        wrapped._twinbench_watch = True  # type: ignore[attr-defined]
        handlers[msg_type] = wrapped
    _installed = kernel
