"""Serve the dashboard notebook as a Voila app.

Voila runs in a subprocess (it owns its own Tornado server and kernels); this module finds the
notebook, builds the command line, and starts and stops the server. The page is rendered with
``twinbench``, the Voila template installed with the package (``share/jupyter/voila/templates/
twinbench``: a header, a loading indicator, light and dark themes), and makes no off-host
request: the template drops the lab template's CDN links and the dashboard shows Bokeh through
jupyter_bokeh with BokehJS inline.

With ``auth="users"`` or ``auth="token"`` visitors sign in first (see :mod:`twinbench.auth` and
docs/security.md): Voila runs with twinbench's identity provider, authorizer and kernel websocket
connection (:mod:`twinbench._voila_auth`), which stamps the signed-in user and role on every
message a page sends to its kernel.

Nothing here imports Voila, ipywidgets or Bokeh: ``import twinbench.app`` stays light.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["VoilaServer", "dashboard_env", "dashboard_path", "free_port", "template_dir",
           "voila_command"]

#: The template name passed to ``voila --template``.
TEMPLATE = "twinbench"
#: What ``voila_command(auth=...)`` passes to Voila: twinbench's sign-in (twinbench._voila_auth).
AUTH_CLASSES = {
    "identity_provider_class": "twinbench._voila_auth.TwinbenchIdentityProvider",
    "authorizer_class": "twinbench._voila_auth.TwinbenchAuthorizer",
    "kernel_websocket_connection_class": "twinbench._voila_auth.TwinbenchKernelConnection",
}
#: The template in the source tree (what ``pip install`` installs under ``share/jupyter``).
SOURCE_TEMPLATE = (Path(__file__).resolve().parents[1] / "share" / "jupyter" / "voila"
                   / "templates" / TEMPLATE)

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on now.

    Examples
    --------
    >>> 0 < free_port() < 65536
    True
    """
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def dashboard_path(name: str = "dashboard.ipynb") -> Path:
    """The dashboard notebook: ``notebooks/<name>`` of the source tree, or of the current
    directory.

    Raises
    ------
    FileNotFoundError
        Naming the places looked at.

    Examples
    --------
    >>> dashboard_path().name
    'dashboard.ipynb'
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a notebook file name, got {name!r}")
    candidates = [Path(__file__).resolve().parents[1] / "notebooks" / name,
                  Path.cwd() / "notebooks" / name, Path.cwd() / name]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name}: not found in {', '.join(str(p.parent) for p in candidates)}")


def template_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """The ``twinbench`` Voila template that ``voila --template=twinbench`` would use: the
    first Jupyter data directory holding it (``JUPYTER_PATH`` of `env`, then ``jupyter --paths``'
    data directories), or None when it is installed nowhere.

    Examples
    --------
    >>> path = template_dir()
    >>> path is None or (path / "index.html.j2").is_file()
    True
    """
    env = os.environ if env is None else env
    roots = [p for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    try:
        from jupyter_core.paths import jupyter_path
    except ImportError:  # no Jupyter here: nothing but JUPYTER_PATH to look in
        pass
    else:
        roots += jupyter_path()
    for root in roots:
        candidate = Path(root) / "voila" / "templates" / TEMPLATE
        if (candidate / "index.html.j2").is_file():
            return candidate
    return None


def dashboard_env(opcua_url: str, writable: Sequence[str] | str = (),
                  audit: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The environment variables the dashboard notebook reads.

    Parameters
    ----------
    opcua_url : str
        ``TWINBENCH_OPCUA_URL``: the plant's OPC-UA endpoint.
    writable : sequence of str or str
        ``TWINBENCH_WRITABLE``: tags the operator may write (comma-separated); empty = read-only.
    audit : path, optional
        ``TWINBENCH_AUDIT``: the JSON-lines audit log of writes.

    Examples
    --------
    >>> dashboard_env("opc.tcp://127.0.0.1:4840/twinbench/plant", ["speed_setpoint"])
    {'TWINBENCH_OPCUA_URL': 'opc.tcp://127.0.0.1:4840/twinbench/plant', \
'TWINBENCH_WRITABLE': 'speed_setpoint'}
    """
    if not isinstance(opcua_url, str) or not opcua_url.startswith("opc.tcp://"):
        raise ValueError(f"opcua_url: expected opc.tcp://host:port/path, got {opcua_url!r}")
    if isinstance(writable, str):
        writable = [w for w in writable.split(",")]
    tags = [str(w).strip() for w in writable if str(w).strip()]
    env = {"TWINBENCH_OPCUA_URL": opcua_url, "TWINBENCH_WRITABLE": ",".join(tags)}
    if audit is not None:
        env["TWINBENCH_AUDIT"] = os.fspath(audit)
    return env


def _check_auth(auth: str | None, token_role: str | None) -> str | None:
    from twinbench.auth import ROLES

    if auth in (None, "none"):
        return None
    if auth not in ("users", "token"):
        raise ValueError(f"auth: expected None, 'users' or 'token', got {auth!r}")
    if token_role is not None and token_role not in ROLES:
        raise ValueError(f"token_role: expected one of {', '.join(ROLES)}, got {token_role!r}")
    return auth


def voila_command(notebook: str | os.PathLike[str], port: int, *, host: str = "127.0.0.1",
                  template: str | None = TEMPLATE, theme: str = "light",
                  python: str | None = None, preheat: bool = True,
                  auth: str | None = None, users_file: str | os.PathLike[str] | None = None,
                  token: str | None = None, token_role: str | None = None,
                  extra: Sequence[str] = ()) -> list[str]:
    """The ``voila`` command line serving `notebook` on `host`:`port`, without a browser.

    `theme` is Voila's: ``light``, ``dark`` or an installed JupyterLab theme's name (a page
    can ask for another with ``?theme=``).

    With `preheat` (the default), Voila keeps one kernel that has already run the notebook
    waiting for the next visitor: the page opens without waiting for the kernel to start, the
    imports and the connection to the equipment (the waiting kernel's twin runs meanwhile).

    With `auth`, visitors sign in: ``"users"`` with a name and password of `users_file` (default
    ``$TWINBENCH_USERS``, else ``~/.config/twinbench/users.json``), and with `token` too when
    one is given; ``"token"`` with `token` only (None: Voila makes one and prints it). Who
    signs in with the token gets `token_role` (default ``$TWINBENCH_TOKEN_ROLE``, else
    ``viewer``). The token is then on the command line, which other accounts on the machine can
    read: :class:`VoilaServer` passes it in the environment instead.

    Examples
    --------
    >>> cmd = voila_command("dashboard.ipynb", 8866, python="python")
    >>> cmd[:4]
    ['python', '-m', 'voila', 'dashboard.ipynb']
    >>> "--port=8866" in cmd and "--no-browser" in cmd
    True
    >>> signin = voila_command("dashboard.ipynb", 8866, auth="users", users_file="users.json")
    >>> "--TwinbenchIdentityProvider.users_path=users.json" in signin
    True
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port: expected 1..65535, got {port!r}")
    if not isinstance(theme, str) or not theme.strip():
        raise ValueError(f"theme: expected 'light', 'dark' or a JupyterLab theme name, "
                         f"got {theme!r}")
    cmd = [python or sys.executable, "-m", "voila", os.fspath(notebook), "--no-browser",
           f"--port={port}", f"--Voila.ip={host}", f"--theme={theme}",
           # a kernel that is slow to start is not an error on a busy 2-core machine
           "--VoilaExecutor.timeout=120",
           # the twin streams for as long as the page is open: no idle culling
           "--MappingKernelManager.cull_idle_timeout=0",
           # Voila loads every lab extension; ours needs JupyterLab's launcher, absent here
           "--VoilaConfiguration.extension_denylist", "jupyterlab-twinbench"]
    if template:
        cmd.append(f"--template={template}")
    if preheat:
        cmd += ["--preheat_kernel=True", "--pool_size=1"]
    auth = _check_auth(auth, token_role)
    if auth is not None:
        cmd += [f"--Voila.{name}={cls}" for name, cls in AUTH_CLASSES.items()]
        cmd.append(f"--TwinbenchIdentityProvider.mode={auth}")
        if auth == "users" and users_file is not None:
            cmd.append(f"--TwinbenchIdentityProvider.users_path={os.fspath(users_file)}")
        if token_role is not None:
            cmd.append(f"--TwinbenchIdentityProvider.token_role={token_role}")
        if token:
            cmd.append(f"--token={token}")
        elif auth == "token":
            cmd.append("--token")  # Voila makes one and prints the URL with it
        if preheat:
            # The preheated kernel starts before the identity provider sets TWINBENCH_AUTH for
            # the kernels: given here (when the environment has none), or it would trust any
            # role in a message header.
            cmd.append(f"--VoilaKernelManager.default_env_variables=TWINBENCH_AUTH={auth}")
        # the template's header shows who is signed in, and a sign-out link
        cmd.append(f"--VoilaConfiguration.resources=twinbench_auth={auth}")
    elif users_file is not None or token is not None:
        raise ValueError("users_file, token: only with auth='users' or auth='token'")
    cmd.extend(extra)
    return cmd


class VoilaServer:
    """Voila serving the dashboard in a subprocess.

    Parameters
    ----------
    notebook : path, optional
        The notebook (default :func:`dashboard_path`).
    port : int, optional
        The port (default: a free one).
    host : str
        The interface (loopback by default: the app can write to equipment).
    env : mapping, optional
        Extra environment variables for Voila and its kernels (see :func:`dashboard_env`).
    quiet : bool
        Send Voila's log to a file (``.log_path``) instead of this process's stderr.
    preheat : bool
        Keep a kernel that has run the notebook ready for the next page (see
        :func:`voila_command`).
    theme : str
        ``light`` (the default) or ``dark`` (see :func:`voila_command`).
    auth : {None, "users", "token"}
        Sign-in (see :func:`voila_command`). Sets ``TWINBENCH_AUTH`` in the server's
        environment, which its kernels inherit (``"none"`` without sign-in: a kernel must then
        not trust a role in a message header).
    users_file : path, optional
        With ``auth="users"``: the users file (``TWINBENCH_USERS``; default
        ``$TWINBENCH_USERS``, else ``~/.config/twinbench/users.json``). It must exist.
    token : str, optional
        An access token that also signs in (``auth="users"``) or that alone does
        (``auth="token"``: None makes one, ``.token``). Neither on the command line nor in the
        environment (both visible to others, the environment to the kernels): in a file that
        the server reads at start-up (``TWINBENCH_TOKEN_FILE``) and :meth:`start` then deletes.
    token_role : str
        The role of whoever signs in with the token (``TWINBENCH_TOKEN_ROLE``).

    Examples
    --------
    >>> server = VoilaServer(port=8866)
    >>> server.url
    'http://127.0.0.1:8866/'
    >>> server.running
    False
    """

    def __init__(self, notebook: str | os.PathLike[str] | None = None, *,
                 port: int | None = None, host: str = "127.0.0.1",
                 env: Mapping[str, str] | None = None, quiet: bool = True,
                 preheat: bool = True, theme: str = "light",
                 auth: str | None = None, users_file: str | os.PathLike[str] | None = None,
                 token: str | None = None, token_role: str = "viewer",
                 extra: Sequence[str] = ()) -> None:
        self.notebook = Path(notebook) if notebook is not None else dashboard_path()
        if not self.notebook.is_file():
            raise FileNotFoundError(f"notebook: {self.notebook} does not exist")
        self.host = str(host)
        self.port = free_port(self.host) if port is None else port
        self.auth = _check_auth(auth, token_role)
        self.users_file: Path | None = None
        self.token: str | None = None
        if self.auth is None and (users_file is not None or token is not None):
            raise ValueError("users_file, token: only with auth='users' or auth='token'")
        if self.auth == "users":
            from twinbench.auth import default_users_path

            self.users_file = (Path(users_file).expanduser() if users_file is not None
                               else default_users_path())
            if not self.users_file.is_file():
                raise FileNotFoundError(
                    f"users_file: {self.users_file} does not exist (add accounts with "
                    f"`twinbench users add NAME --role ROLE --file {self.users_file}`)")
        if token is not None and (not isinstance(token, str) or len(token) < 8):
            raise ValueError("token: expected a str of at least 8 characters")
        self.token = token or (secrets.token_urlsafe(24) if self.auth == "token" else None)
        self.command = voila_command(self.notebook, self.port, host=self.host, theme=theme,
                                     preheat=preheat, auth=self.auth,
                                     users_file=self.users_file, token_role=token_role,
                                     extra=extra)
        if self.auth == "token":
            # voila_command asks Voila to make a token (bare --token); ours comes from the
            # environment instead: drop the flag.
            self.command.remove("--token")
        #: The environment Voila gets on top of this process's (None removes a variable).
        self.env: dict[str, str | None] = dict(env or {})
        from twinbench.auth import ENV_AUTH, ENV_TOKEN_FILE, ENV_TOKEN_ROLE, ENV_USERS

        # Set either way: a TWINBENCH_AUTH inherited from this process must not tell the kernels
        # of a server without sign-in to trust the roles in message headers (nothing stamps
        # them), nor a token file inherited from it give its token to this server.
        self.env[ENV_AUTH] = self.auth or "none"
        self.env[ENV_TOKEN_FILE] = None  # None: removed from the server's environment
        if self.auth is not None:
            self.env[ENV_TOKEN_ROLE] = token_role
            if self.users_file is not None:
                self.env[ENV_USERS] = os.fspath(self.users_file)
        self.quiet = bool(quiet)
        self.log_path: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._run_dir: Path | None = None

    @property
    def url(self) -> str:
        """The app's address."""
        return f"http://{self.host}:{self.port}/"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> VoilaServer:
        """Start Voila and wait until it accepts connections (at most `timeout` s).

        Starting a running server does nothing.
        """
        if self.running:
            return self
        env = dict(os.environ)
        env.update(self.env)
        env = {k: v for k, v in env.items() if v is not None}
        if template_dir(env) is None:
            # A source tree used without installing it (PYTHONPATH): its copy of the template,
            # which `pip install` would have put in the environment's share/jupyter.
            if not (SOURCE_TEMPLATE / "index.html.j2").is_file():
                raise FileNotFoundError(
                    f"the {TEMPLATE!r} Voila template is not installed (no voila/templates/"
                    f"{TEMPLATE} in the Jupyter data directories, `jupyter --paths`) and "
                    f"{SOURCE_TEMPLATE} does not exist: reinstall twinbench")
            share = SOURCE_TEMPLATE.parents[2]
            log.warning("the %r Voila template is not installed in this environment (pip install "
                        "twinbench installs it); using the source tree's copy, %s",
                        TEMPLATE, SOURCE_TEMPLATE)
            env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(share),
                                                                env.get("JUPYTER_PATH")]))
        # the kernels import twinbench from this tree even where it is not installed
        repo = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
        token_dir = None
        if self.token:
            from twinbench.auth import ENV_TOKEN_FILE

            # read by the server as it starts, deleted once it listens (finally, below)
            token_dir = Path(tempfile.mkdtemp(prefix="twinbench-token-"))  # mode 0700
            token_file = token_dir / "token"
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.token)
            env[ENV_TOKEN_FILE] = os.fspath(token_file)
        try:
            return self._start(env, timeout)
        finally:
            if token_dir is not None:
                shutil.rmtree(token_dir, ignore_errors=True)

    def _start(self, env: dict[str, str], timeout: float) -> VoilaServer:
        if self.quiet:
            self._run_dir = Path(tempfile.mkdtemp(prefix="twinbench-voila-"))
            self.log_path = self._run_dir / "voila.log"
            out = open(self.log_path, "wb")  # noqa: SIM115 -- handed to the child
        else:
            out = None
        try:
            self.proc = subprocess.Popen(self.command, env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT if out else None,
                                         start_new_session=True)
        finally:
            if out is not None:
                out.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"voila exited with code {self.proc.returncode} before it "
                                   f"listened{self._log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"voila did not listen on {self.url} within {timeout} s"
                                   f"{self._log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop Voila and its kernels (SIGTERM to its process group, SIGKILL after `timeout`);
        the exit code, or None if it was not running."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        # kernels live in the same session; leave none behind
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return proc.returncode

    def log(self) -> str:
        """What Voila printed (when started quiet)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def _log_tail(self) -> str:
        text = self.log()
        return f"; its log ends:\n{text[-2000:]}" if text else ""

    def __enter__(self) -> VoilaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

