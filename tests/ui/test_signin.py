"""Sign-in for twinbench apps, in a real headless Chromium against Voila with
``VoilaServer(auth="users")`` (twinbench._voila_auth: identity provider, authorizer, stamping
kernel connection).

The app is a small notebook written here: a button whose click handler writes the header of the
message being handled (``get_ipython().kernel.get_parent()["header"]``: ``username`` and
``twinbench_role``, with a click count) into a label. A viewer signs in and sees their name and
role; messages forged in the page, with a header claiming ``admin`` / ``engineer``, sent through
the page's own kernel connection and through websockets the page opens itself in each protocol
(v1 binary, legacy JSON, legacy binary), still arrive stamped as the viewer. Also: a wrong
password, a request without sign-in, another user's websocket to the viewer's kernel, the token
(form and URL) with its role, signing out, and a user removed while signed in.
Screenshots go to test-artifacts/signin-*.png, Voila's log to test-artifacts/signin-voila.log.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from twinbench.auth import UsersFile

VIEWER = ("vera", "vera-viewer-pass")
OPERATOR = ("olga", "olga-operator-pass")
REMOVED = ("rita", "rita-viewer-pass")
TOKEN = "tok-8d2f6a0c-sign-in-test"
SETTLE = 120_000  # ms: a page load starts a kernel and runs the notebook on a shared machine

NOTEBOOK_CODE = '''\
import os
import ipywidgets as w
from IPython import get_ipython

clicks = [0]
who = w.Label("nobody yet", layout=w.Layout(width="640px"))
who.add_class("who")
env = w.Label(f"auth={os.environ.get('TWINBENCH_AUTH')} "
              f"token_in_env={any(TOKEN in v for v in os.environ.values())} "
              f"token_file={os.path.exists(os.environ.get('TWINBENCH_TOKEN_FILE', ''))}")
env.add_class("env")
button = w.Button(description="who am I")
button.add_class("whoami")

def on_click(_):
    clicks[0] += 1
    header = get_ipython().kernel.get_parent()["header"]
    who.value = f"{clicks[0]}|{header.get('username')}|{header.get('twinbench_role')}"

button.on_click(on_click)
w.VBox([button, who, env])
'''

# The page's kernel connection, the Button's comm id, and four ways to send the Button a click
# whose header claims admin / engineer. Resolves when each was sent (or with the error).
FORGE_JS = r"""
async ([how, index]) => {
  const wm = window.jupyterapp.widgetManager;
  const kernel = wm.kernel;
  const pending = wm._models instanceof Map ? [...wm._models.values()]
                                            : Object.values(wm._models);
  const models = await Promise.all(pending);
  const button = models.find((m) => m.get("_view_name") === "ButtonView");
  const header = {msg_id: `forged-${how}-${index}`, msg_type: "comm_msg", username: "admin",
                  twinbench_role: "engineer", session: "forger", version: "5.3",
                  date: new Date().toISOString()};
  const content = {comm_id: button.model_id,
                   data: {method: "custom", content: {event: "click"}}};
  const msg = {header, parent_header: {}, metadata: {}, content, channel: "shell",
               buffers: []};
  if (how === "page") {
    kernel.sendShellMessage(msg, false, true);
    return kernel._selectedProtocol || "legacy";
  }
  const enc = new TextEncoder();
  const url = `ws://${location.host}/api/kernels/${kernel.id}/channels?session_id=forger-${how}`;
  const ws = how === "v1" ? new WebSocket(url, ["v1.kernel.websocket.jupyter.org"])
                          : new WebSocket(url);
  ws.binaryType = "arraybuffer";
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onclose = (e) => reject(new Error(`closed before open: ${e.code}`));
  });
  if (how === "json") {
    ws.send(JSON.stringify(msg));
  } else if (how === "binary") {
    // legacy binary: 4-byte count and offsets (big-endian), the JSON, then the buffers
    const {buffers, ...rest} = msg;
    const parts = [enc.encode(JSON.stringify(rest)), new Uint8Array([1, 2, 3])];
    const head = 4 * (parts.length + 1);
    const out = new Uint8Array(head + parts.reduce((n, p) => n + p.length, 0));
    const view = new DataView(out.buffer);
    view.setUint32(0, parts.length);
    let at = head;
    parts.forEach((p, i) => { view.setUint32(4 * (i + 1), at); out.set(p, at); at += p.length; });
    ws.send(out.buffer);
  } else {
    // v1: 8-byte count and offsets (little-endian), the channel, then the message's parts
    const parts = [header, {}, {}, content].map((p) => enc.encode(JSON.stringify(p)));
    const channel = enc.encode("shell");
    const offsets = [8 * (parts.length + 3)];
    offsets.push(offsets[0] + channel.length);
    for (const p of parts) offsets.push(offsets[offsets.length - 1] + p.length);
    const out = new Uint8Array(offsets[offsets.length - 1]);
    const view = new DataView(out.buffer);
    view.setBigUint64(0, BigInt(offsets.length), true);
    offsets.forEach((o, i) => view.setBigUint64(8 * (i + 1), BigInt(o), true));
    out.set(channel, offsets[0]);
    parts.forEach((p, i) => out.set(p, offsets[i + 1]));
    ws.send(out.buffer);
  }
  window.__forgers = (window.__forgers || []).concat([ws]);  // kept open until the check
  return how;
}
"""

# Whether a websocket to `kernelId` opens (from whatever page this runs in, with its cookies).
WEBSOCKET_OPENS_JS = r"""
(kernelId) => new Promise((resolve) => {
  const ws = new WebSocket(`ws://${location.host}/api/kernels/${kernelId}/channels`);
  ws.onopen = () => { ws.close(); resolve("open"); };
  ws.onclose = () => resolve("refused");
})
"""


@pytest.fixture(scope="module")
def app(browser: Any, artifacts: Any, tmp_path_factory: Any) -> Iterator[Any]:
    """The notebook in Voila with sign-in: users vera (viewer), olga (operator), rita (viewer),
    and the token (role operator). (`browser` first: it skips where Chromium is missing.)"""
    import nbformat

    from twinbench.app import VoilaServer

    folder = tmp_path_factory.mktemp("signin")
    notebook = folder / "whoami.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"TOKEN = {TOKEN!r}\n" + NOTEBOOK_CODE)]
    nb.metadata["title"] = "Who am I"
    nbformat.write(nb, notebook)
    users = UsersFile(folder / "users.json")
    users.add(*VIEWER, "viewer")
    users.add(*OPERATOR, "operator")
    users.add(*REMOVED, "viewer")
    server = VoilaServer(notebook, auth="users", users_file=users.path, token=TOKEN,
                         token_role="operator", extra=["--show_tracebacks=True"])
    server.users = users
    try:
        server.start()
        yield server
    finally:
        server.stop()
        (artifacts.dir / "signin-voila.log").write_text(server.log())


def _sign_in(page: Any, app: Any, name: str, password: str, path: str = "") -> None:
    page.goto(app.url + path)
    page.wait_for_selector("#twinbench-username")
    page.fill("#twinbench-username", name)
    page.fill("#twinbench-password", password)
    page.click("#twinbench-signin-password button[type=submit]")


def _open_app(page: Any) -> None:
    page.wait_for_selector("button.whoami", timeout=SETTLE)


def _click(page: Any, count: int) -> str:
    page.click("button.whoami")
    return _label_after(page, count)


def _label_after(page: Any, count: int) -> str:
    page.wait_for_function(
        "n => { const el = document.querySelector('.who');"
        "       return el && el.textContent.startsWith(`${n}|`); }", arg=count, timeout=60_000)
    return page.text_content(".who").strip()


def test_without_sign_in_every_way_in_leads_to_the_sign_in_page(app, new_page, artifacts):
    # the notebook's URL: a redirect to the sign-in page, which comes back to it
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.build_opener(NoRedirect).open(app.url, timeout=30)
    assert info.value.code == 302
    assert info.value.headers["Location"] == "/login?next=%2F"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.build_opener(NoRedirect).open(app.url + "twinbench/whoami", timeout=30)
    assert info.value.code == 302

    page = new_page()
    page.goto(app.url)
    assert page.url == app.url + "login?next=%2F"
    assert page.is_visible(".twinbench-header .twinbench-logo")
    assert page.is_visible("#twinbench-username") and page.is_visible("#twinbench-password")
    assert page.locator("#twinbench-signin-message").count() == 0
    # no kernel talks to a page that did not sign in
    assert page.evaluate(WEBSOCKET_OPENS_JS, "00000000-0000-0000-0000-000000000000") == "refused"
    artifacts("signin-page", page)
    assert not page.off_host.urls, page.off_host.urls
    assert not page.errors, page.errors


def test_a_wrong_password_is_refused_and_logged_without_it(app, new_page, wait_until,
                                                           artifacts):
    page = new_page()
    _sign_in(page, app, VIEWER[0], "not-veras-password")
    page.wait_for_selector("#twinbench-signin-message[role=alert]")
    assert page.url.startswith(app.url + "login")
    assert page.text_content("#twinbench-signin-message").strip() == "Wrong name or password."
    assert page.is_visible("#twinbench-password")
    wait_until(lambda: f"sign-in refused for '{VIEWER[0]}'" in app.log(), 30,
               "the refusal in Voila's log")
    # an unknown name is refused the same way, and not written to the log
    _sign_in(page, app, "mallory", "whatever-password")
    page.wait_for_selector("#twinbench-signin-message[role=alert]")
    assert page.text_content("#twinbench-signin-message").strip() == "Wrong name or password."
    wait_until(lambda: "sign-in refused for an unknown name" in app.log(), 30,
               "the second refusal in Voila's log")
    artifacts("signin-refused", page)
    log = app.log()
    # an unknown name may be a password typed in the wrong field: never logged
    for secret in ("not-veras-password", "whatever-password", VIEWER[1], TOKEN, "mallory"):
        assert secret not in log
    assert not page.off_host.urls, page.off_host.urls


def test_a_viewer_is_stamped_and_forged_headers_arrive_as_the_viewer(app, new_page, artifacts,
                                                                      wait_until):
    page = new_page()
    _sign_in(page, app, *VIEWER)
    _open_app(page)
    assert page.url == app.url
    # the header says who is signed in
    page.wait_for_selector("#twinbench-user:not([hidden])", timeout=30_000)
    assert page.text_content(".twinbench-user-name").strip() == "vera"
    assert page.text_content(".twinbench-user-role").strip() == "viewer"
    # the kernel knows sign-in is on, and never saw the token
    assert page.text_content(".env").strip() == "auth=users token_in_env=False token_file=False"

    assert _click(page, 1) == "1|vera|viewer"
    protocols = []
    for count, how in enumerate(["page", "v1", "json", "binary"], start=2):
        protocols.append(page.evaluate(FORGE_JS, [how, count]))
        assert _label_after(page, count) == f"{count}|vera|viewer", how
    assert protocols[0] == "v1.kernel.websocket.jupyter.org"  # the page's own connection
    artifacts("signin-viewer", page)
    assert "dropped a message" not in app.log()

    # another signed-in user cannot talk to vera's kernel, nor can a browser without sign-in
    kernel_id = page.evaluate("window.jupyterapp.widgetManager.kernel.id")
    other = new_page()
    _sign_in(other, app, *OPERATOR, path="login?next=%2Ftwinbench%2Fwhoami")
    other.wait_for_url(app.url + "twinbench/whoami")
    assert json.loads(other.text_content("body"))["role"] == "operator"
    assert other.evaluate(WEBSOCKET_OPENS_JS, kernel_id) == "refused"
    wait_until(lambda: f"refused kernel {kernel_id} to olga" in app.log(), 30,
               "the authorizer's refusal in Voila's log")
    anonymous = new_page()
    anonymous.goto(app.url + "login")
    assert anonymous.evaluate(WEBSOCKET_OPENS_JS, kernel_id) == "refused"
    # and vera's own page still works
    assert _click(page, 6) == "6|vera|viewer"
    for p in (page, other, anonymous):
        assert not p.off_host.urls, p.off_host.urls
        assert not p.errors, p.errors


def test_the_token_signs_in_with_its_role(app, new_page, artifacts):
    page = new_page()
    page.goto(app.url + "login")
    page.click(".twinbench-signin-token summary")
    page.fill("#twinbench-token", TOKEN[:-1])  # a wrong token first
    page.click("#twinbench-signin-token button[type=submit]")
    page.wait_for_selector("#twinbench-signin-message[role=alert]")
    assert page.text_content("#twinbench-signin-message").strip() == "Wrong access token."
    page.click(".twinbench-signin-token summary")
    page.fill("#twinbench-token", TOKEN)
    page.click("#twinbench-signin-token button[type=submit]")
    _open_app(page)
    label = _click(page, 1)
    assert re.fullmatch(r"1\|token:[0-9a-f]{8}\|operator", label), label
    assert page.text_content(".twinbench-user-role").strip() == "operator"
    artifacts("signin-token", page)

    # Voila's URL with ?token= signs in too
    direct = new_page()
    direct.goto(f"{app.url}?token={TOKEN}")
    _open_app(direct)
    assert re.fullmatch(r"1\|token:[0-9a-f]{8}\|operator", _click(direct, 1))
    for p in (page, direct):
        assert not p.off_host.urls and not p.errors, (p.off_host.urls, p.errors)


def test_signing_out(app, new_page, artifacts):
    page = new_page()
    _sign_in(page, app, *OPERATOR)
    _open_app(page)
    assert _click(page, 1) == "1|olga|operator"
    page.click(".twinbench-signout")
    page.wait_for_url(app.url + "logout")
    assert page.text_content("#twinbench-signin-message").strip() == "You are signed out."
    artifacts("signin-signed-out", page)
    page.goto(app.url)
    assert page.url == app.url + "login?next=%2F"
    assert not page.off_host.urls and not page.errors, (page.off_host.urls, page.errors)


def test_a_user_removed_while_signed_in_is_cut_off(app, new_page, wait_until):
    page = new_page()
    _sign_in(page, app, *REMOVED)
    _open_app(page)
    assert _click(page, 1) == "1|rita|viewer"
    app.users.remove(REMOVED[0])
    page.click("button.whoami")
    wait_until(lambda: "rita is no longer signed in" in app.log(), 60,
               "the dropped message in Voila's log")
    assert page.text_content(".who").startswith("1|")  # the click never reached the kernel
    page.goto(app.url)
    assert page.url == app.url + "login?next=%2F"
