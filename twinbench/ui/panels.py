"""Panels of the workbench: connection, tag browser, scenarios, control, maintenance.

Each panel is a class with a ``.widget`` (an ipywidget) that displays itself. Work that waits
(connecting, browsing, writing) runs as asyncio tasks on the kernel's loop; what-if ensembles run
in a thread executor so the loop (and the live plots) keep going.
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
from bokeh.models import ColumnDataSource, Span
from bokeh.plotting import figure
from jupyter_bokeh import BokehModel

from twinbench.session import Identity, request_identity
from twinbench.ui.plots import fan_chart, load_bokeh

__all__ = ["ConnectionPanel", "ControlPanel", "MaintenancePanel", "RulesPanel", "ScenarioPanel",
           "TagBrowser", "html_table"]

_logger = logging.getLogger(__name__)


def html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
               *, empty: str = "none") -> str:
    """Rows of dicts as a small HTML table (values escaped).

    Examples
    --------
    >>> html_table([{"a": 1, "b": "<x>"}])
    '<table class="twinbench-table"><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>&lt;x&gt;</td></tr></table>'
    >>> html_table([])
    '<i>none</i>'
    """
    if not rows:
        return f"<i>{html.escape(empty)}</i>"
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f'<table class="twinbench-table"><tr>{head}</tr>{body}</table>'


class _Component:
    """A ``.widget`` and ``_ipython_display_`` delegating to it."""

    _widget: Any

    @property
    def widget(self) -> Any:
        """The ipywidget to display."""
        return self._widget

    def _ipython_display_(self) -> None:
        from IPython.display import display

        load_bokeh()
        display(self._widget)


_VERBS = {"write": "write to the equipment", "scenario": "run scenarios",
          "configure": "change the connection or the tag map"}


def _permitted(action: str, message: Any) -> Identity | None:
    """Who sent the click being handled, if their role permits `action`; else None, with the
    refusal shown in `message` (an HTML widget). Checked in the kernel at every click: a
    control hidden or disabled in the page can still be clicked by a crafted message."""
    who = request_identity()
    if who.may(action):
        return who
    _logger.warning("refused: %s may not %s", who, action)
    message.value = (f"<span style='color:red'>{html.escape(str(who))} may not "
                     f"{_VERBS.get(action, action)}</span>")
    return None


def _spawn(coro: Any, owner: Any, name: str) -> asyncio.Task[Any]:
    """A task on the running loop, kept referenced by `owner` until it finishes."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    tasks = owner.__dict__.setdefault("_tasks", set())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


# -- connection --------------------------------------------------------------------------------


class _Refresher:
    """A panel that calls its ``update()`` every ``interval`` s from one task on the running
    loop; a failed refresh is logged and never ends the task."""

    interval: float
    _task: asyncio.Task[None] | None

    def update(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            try:
                self.update()
            except Exception:  # a failed refresh must not end the refresher
                _logger.exception("%s: refresh failed", type(self).__name__)
            await asyncio.sleep(self.interval)

    def start(self) -> Any:
        """Refresh on the running loop every `interval` s; starting twice does nothing."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


class ConnectionPanel(_Component, _Refresher):
    """URL, security, credentials, Connect/Disconnect, and the source's live status.

    The password box is an ``ipywidgets.Password`` (shown as dots); its value is handed to the
    source on Connect and then cleared: it is never displayed, logged or saved.

    Parameters
    ----------
    source : source, optional
        A source to show (e.g. a twin's); Connect replaces it with a new one.
    tags : mapping or path, optional
        The tag map Connect uses (editable as ``name = address`` lines).
    interval : float, default 1.0
        Seconds between status refreshes.

    Examples
    --------
    >>> panel = ConnectionPanel(tags={"speed": "ns=2;s=Pump1.speed"})
    >>> panel.password.value = "s3cret"; "s3cret" in panel.status_html.value
    False
    """

    def __init__(self, source: Any = None, *, tags: Any = None, interval: float = 1.0,
                 **options: Any) -> None:
        if not (isinstance(interval, (int, float)) and interval > 0):
            raise ValueError(f"interval: expected seconds > 0, got {interval!r}")
        self.source = source
        self.interval = float(interval)
        self.options = dict(options)
        status = getattr(source, "status", None) or {}
        self.url = widgets.Text(value=str(status.get("url") or getattr(source, "url", "") or ""),
                                placeholder="opc.tcp://host:4840/path or mqtt://host:1883",
                                description="URL")
        self.security = widgets.Dropdown(options=["none", "sign", "encrypt"],
                                         value=status.get("security") or "none",
                                         description="Security")
        # OPC-UA security: the server's certificate must be in the trust list, unless the
        # engineer chooses trust on first use (stored, then pinned; never silent).
        self.trust = widgets.Dropdown(options=[("trust list", "list"),
                                               ("trust on first use", "first-use")],
                                      value=status.get("trust") or "list", description="Trust")
        self.username = widgets.Text(value="", description="User")
        self.password = widgets.Password(value="", description="Password")
        lines = ""
        tag_source = tags if tags is not None else getattr(source, "tags", None)
        if tag_source is not None and not isinstance(tag_source, (str, Path)):
            items = tag_source.items() if isinstance(tag_source, Mapping) else []
            lines = "\n".join(f"{k} = {v}" for k, v in items)
        self._tags_path = tag_source if isinstance(tag_source, (str, Path)) else None
        self.tags = widgets.Textarea(value=lines, description="Tags",
                                     placeholder="speed = ns=2;s=Pump1.speed")
        self.connect_button = widgets.Button(description="Connect", button_style="success",
                                             icon="plug")
        self.disconnect_button = widgets.Button(description="Disconnect", icon="power-off")
        self.message = widgets.HTML("")
        self.connect_button.on_click(lambda _: _permitted("configure", self.message) and _spawn(
            self.connect(), self, "connect"))
        self.disconnect_button.on_click(lambda _: _permitted("configure", self.message) and
                                        _spawn(self.disconnect(), self, "disconnect"))
        self.status_html = widgets.HTML(self._status_text())
        self._task: asyncio.Task[None] | None = None
        self._last: tuple[float, int] | None = None
        self._widget = widgets.VBox([
            widgets.HTML("<b>Connection</b>"), self.url, self.security, self.trust, self.username,
            self.password, self.tags,
            widgets.HBox([self.connect_button, self.disconnect_button]), self.message,
            self.status_html])

    def apply_role(self, who: Identity) -> None:
        """Enable the fields and buttons for roles that may configure (engineers)."""
        locked = not who.may("configure")
        for w in (self.url, self.security, self.trust, self.username, self.password, self.tags,
                  self.connect_button, self.disconnect_button):
            w.disabled = locked

    def _tag_map(self) -> Any:
        if self._tags_path is not None and not self.tags.value.strip():
            return self._tags_path
        out = {}
        for number, line in enumerate(self.tags.value.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, address = line.partition("=")
            if not sep or not name.strip() or not address.strip():
                raise ValueError(f"tags: line {number}: expected 'name = address', got {line!r}")
            out[name.strip()] = address.strip()
        if not out:
            raise ValueError("tags: expected at least one 'name = address' line")
        return out

    async def connect(self) -> Any:
        """Build a source from the fields (``twinbench.connect``), start it, show its status."""
        from twinbench.io import connect

        password = self.password.value or None
        self.password.value = ""  # never kept in the widget (it syncs to the page)
        try:
            if self.source is not None:
                await self.source.stop()
            options = dict(self.options)
            if self.url.value.startswith("opc.tcp://"):
                options["security"] = self.security.value
                if self.security.value != "none":
                    options["trust"] = self.trust.value
            if self.username.value:
                options["username"] = self.username.value
            if password:
                options["password"] = password
            self.source = connect(self.url.value.strip(), self._tag_map(), **options)
            await self.source.start()
            self.message.value = "<span style='color:green'>connected</span>"
        except Exception as exc:  # noqa: BLE001 - shown to the user, who can fix the fields
            self.message.value = f"<span style='color:red'>{html.escape(str(exc))}</span>"
        self.update()
        return self.source

    async def disconnect(self) -> None:
        """Stop the source."""
        if self.source is not None:
            await self.source.stop()
            self.message.value = "disconnected"
        self.update()

    def _status_text(self) -> str:
        if self.source is None:
            return "<i>not connected</i>"
        st = self.source.status
        values = int(st.get("values", 0) or 0)
        now = time.monotonic()
        rate = None
        if getattr(self, "_last", None) is not None:
            t0, v0 = self._last
            rate = (values - v0) / max(now - t0, 1e-9)
        self._last = (now, values)
        connected = st.get("connected")
        colour = "green" if connected else "red"
        decode = st.get("decode") or {}
        problems = {**(decode.get("rejects") or {}), **(decode.get("flags") or {})}
        problems = {k: v for k, v in problems.items() if v}
        rows = [{"": "state", " ": "connected" if connected else "disconnected"},
                {"": "values", " ": values},
                {"": "rate /s", " ": "–" if rate is None else f"{rate:.1f}"},
                {"": "reconnects", " ": st.get("reconnects", 0)},
                {"": "gaps", " ": st.get("gaps", 0)},
                {"": "bad payloads", " ": ", ".join(f"{k}: {v}" for k, v in problems.items())
                 or "none"}]
        return (f"<span style='color:{colour}'>●</span> "
                f"{html.escape(str(st.get('url', '')))}" + html_table(rows))

    def update(self) -> None:
        """Refresh the status display now."""
        self.status_html.value = self._status_text()



# -- tag browser -------------------------------------------------------------------------------


class TagBrowser(_Component):
    """The source's address space (OPC-UA nodes, MQTT topics) as a collapsible tree; pick tags
    and map them to model variables; save and load the map as YAML.

    Selecting a folder row (``▸``/``▾``) opens or closes it; the filter box shows only the
    values whose name or address contains its text, with their folders opened. The server's
    own nodes (namespace 0, e.g. ``0:Server``) start closed, the rest opens two levels deep.

    Parameters
    ----------
    source : source
        Started (browsing asks the server).
    variables : sequence of str, optional
        The model variables tags can map to (e.g. ``twin.model.output_names``); default: any
        name, starting from the tag's short name.
    depth : int, default 4
        Levels to browse.
    open_levels : int, default 2
        Levels opened when a tree is shown.

    Examples
    --------
    >>> from twinbench.io.browse import BrowseNode
    >>> tb_ = TagBrowser(None, variables=["speed", "power"])
    >>> tb_.show(BrowseNode("0:Objects", "i=85", "Object", [
    ...     BrowseNode("2:Pump1", "ns=2;s=Pump1", "Object", [
    ...         BrowseNode("2:speed", "ns=2;s=Pump1.speed", "Variable")])]))
    >>> [label for label, _ in tb_.select.options]
    ['▾ 0:Objects', '\u2003▾ 2:Pump1', '\u2003\u2003speed']
    >>> tb_.toggle("2:Pump1"); [label for label, _ in tb_.select.options]
    ['▾ 0:Objects', '\u2003▸ 2:Pump1  (1)']
    >>> tb_.pick(["ns=2;s=Pump1.speed"]); tb_.tag_map()
    {'speed': 'ns=2;s=Pump1.speed'}
    """

    def __init__(self, source: Any, *, variables: Sequence[str] | None = None,
                 depth: int = 4, open_levels: int = 2) -> None:
        self.source = source
        self.variables = list(variables) if variables is not None else None
        self.depth = depth
        self.open_levels = int(open_levels)
        self.tree: Any = None
        self._open: set[str] = set()  # paths ("0/1/3": child indices) of the open folders
        self._folders: dict[str, Any] = {}  # path -> folder node, for toggle()
        self._rendering = False
        self.select = widgets.SelectMultiple(options=[], rows=14, description="Nodes",
                                             layout=widgets.Layout(width="100%"))
        self.select.observe(self._on_select, "value")
        self.filter = widgets.Text(value="", placeholder="filter by name or address",
                                   description="Filter", continuous_update=True)
        self.filter.observe(lambda _: self._render(), "value")
        self.refresh_button = widgets.Button(description="Browse", icon="refresh")
        # Browsing, saving and loading act on the kernel's machine: engineers only in an app
        # with sign-in (checked at each click; self.message exists by the time one comes).
        self.refresh_button.on_click(lambda _: _permitted("configure", self.message) and _spawn(
            self.refresh(), self, "browse"))
        self.add_button = widgets.Button(description="Map selected", icon="plus")
        self.add_button.on_click(lambda _: self.pick(self.select.value))
        self.path = widgets.Text(value="tags.yaml", description="File")
        self.save_button = widgets.Button(description="Save", icon="save")
        self.load_button = widgets.Button(description="Load", icon="folder-open")
        self.save_button.on_click(lambda _: _permitted("configure", self.message) and self._try(
            self.save, self.path.value))
        self.load_button.on_click(lambda _: _permitted("configure", self.message) and self._try(
            self.load, self.path.value))
        self.message = widgets.HTML("")
        self.rows = widgets.VBox([])
        self._mapping: dict[str, widgets.Widget] = {}  # address -> variable widget
        self._widget = widgets.VBox([
            widgets.HTML("<b>Tags</b>"), widgets.HBox([self.refresh_button, self.filter]),
            self.select, self.add_button,
            widgets.HTML("<i>address → model variable</i>"), self.rows,
            widgets.HBox([self.path, self.save_button, self.load_button]), self.message])

    def _try(self, func: Any, *args: Any) -> None:
        try:
            func(*args)
            self.message.value = "ok"
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.message.value = f"<span style='color:red'>{html.escape(str(exc))}</span>"

    async def refresh(self) -> Any:
        """Browse the source and show the tree; returns it."""
        if self.source is None:
            raise ValueError("source: no source to browse")
        try:
            tree = await self.source.browse(depth=self.depth)
        except TypeError:  # a source whose browse() takes no depth (MQTT topics)
            tree = await self.source.browse()
        self.show(tree)
        return tree

    def show(self, tree: Any) -> None:
        """Show a BrowseNode tree (value nodes are selectable), opened `open_levels` deep."""
        self.tree = tree
        self._open = set()

        def opened(node: Any, path: str, level: int) -> None:
            if level < self.open_levels and (level == 0 or not node.name.startswith("0:")):
                self._open.add(path)
                for i, child in enumerate(node.children):
                    opened(child, f"{path}/{i}", level + 1)

        if tree is not None:
            opened(tree, "0", 0)
        self._render()

    def toggle(self, folder: str) -> None:
        """Open a closed folder or close an open one, by name (``"2:Pump1"``) or address."""
        for path, node in self._folders.items():
            if folder in (node.name, node.address):
                self._open ^= {path}
                self._render()
                return
        raise ValueError(f"folder: no folder {folder!r} is shown; folders: "
                         f"{sorted(n.name for n in self._folders.values())}")

    def _render(self) -> None:
        """Rebuild the list's rows from the tree, the open folders and the filter."""
        options: list[tuple[str, str]] = []
        self._folders = {}
        query = self.filter.value.strip().lower()

        def matches(node: Any) -> bool:
            return query in node.name.lower() or query in str(node.address or "").lower()

        def below(node: Any) -> list[Any]:
            # a variable's properties (EngineeringUnits, EURange) describe it; they are not tags
            return [c for c in node.children if not c.info.get("property")]

        def count(node: Any) -> int:
            return sum((1 if c.is_value and (not query or matches(c)) else 0) + count(c)
                       for c in below(node))

        def walk(node: Any, level: int, path: str) -> None:
            indent = "\u2003" * level
            if node.is_value:  # a leaf row; an MQTT topic's subtopics follow it, one level in
                if node.address is not None and (not query or matches(node)):
                    options.append((indent + node.name.split(":", 1)[-1], node.address))
                for i, child in enumerate(below(node)):
                    walk(child, level + 1, f"{path}/{i}")
                return
            shown_below = count(node)
            if query and not shown_below:
                return
            self._folders[path] = node
            is_open = bool(query) or path in self._open
            label = f"{indent}{'▾' if is_open else '▸'} {node.name}"
            options.append((label if is_open else f"{label}  ({shown_below})", f"\0{path}"))
            if is_open:
                for i, child in enumerate(node.children):
                    walk(child, level + 1, f"{path}/{i}")

        if self.tree is not None:
            walk(self.tree, 0, "0")
        selected = tuple(v for v in self.select.value if v in {a for _, a in options})
        self._rendering = True
        try:
            self.select.options = options
            self.select.value = selected
        finally:
            self._rendering = False

    def _on_select(self, change: Any) -> None:
        """A folder row selected: open or close it (folders are never part of a selection)."""
        if self._rendering:
            return
        folders = [v for v in change["new"] if v.startswith("\0")]
        if not folders:
            return
        for value in folders:
            self._open ^= {value[1:]}
        self._rendering = True
        try:
            self.select.value = tuple(v for v in change["new"] if not v.startswith("\0"))
        finally:
            self._rendering = False
        self._render()

    @property
    def addresses(self) -> dict[str, str]:
        """Every value address shown: address → short name."""
        if self.tree is None:
            return {}
        return {a: n for n, a in self.tree.variables().items()}

    def pick(self, addresses: Sequence[str]) -> None:
        """Add tags to the map, each with a variable chooser (guessed from its short name)."""
        names = self.addresses
        for address in addresses:
            if address.startswith("\0") or address in self._mapping:
                continue
            short = names.get(address) or address.rsplit(".", 1)[-1].rsplit("/", 1)[-1]
            self._add_row(address, short)

    def _add_row(self, address: str, variable: str) -> None:
        if self.variables is not None:
            options = ["(skip)", *self.variables]
            chooser = widgets.Dropdown(options=options,
                                       value=variable if variable in self.variables else "(skip)",
                                       layout=widgets.Layout(width="12em"))
        else:
            chooser = widgets.Text(value=variable, layout=widgets.Layout(width="12em"))
        remove = widgets.Button(icon="times", layout=widgets.Layout(width="3em"))
        row = widgets.HBox([widgets.Label(address, layout=widgets.Layout(width="18em")),
                            chooser, remove])

        def drop(_: Any) -> None:
            self._mapping.pop(address, None)
            self.rows.children = tuple(r for r in self.rows.children if r is not row)

        remove.on_click(drop)
        self._mapping[address] = chooser
        self.rows.children = (*self.rows.children, row)

    def tag_map(self) -> dict[str, str]:
        """The mapping: model variable → address (skipped and empty rows left out)."""
        out: dict[str, str] = {}
        for address, chooser in self._mapping.items():
            name = str(chooser.value).strip()
            if name and name != "(skip)":
                if name in out:
                    raise ValueError(f"tag_map: {name!r} is mapped to both {out[name]!r} and "
                                     f"{address!r}")
                out[name] = address
        return out

    def save(self, path: str | Path) -> Path:
        """Save the mapping as YAML (or JSON by suffix)."""
        from twinbench.io.tags import tag_map

        return tag_map(self.tag_map()).save(path)

    def load(self, path: str | Path) -> dict[str, str]:
        """Replace the mapping by one read from a file; returns it."""
        from twinbench.io.tags import tag_map

        tm = tag_map(Path(path))
        self._mapping.clear()
        self.rows.children = ()
        for name, address in tm.items():
            self._add_row(str(address), name)
        return self.tag_map()


# -- scenarios ---------------------------------------------------------------------------------


#: The longest what-if a panel runs, in steps (horizon / step): a page cannot ask for more.
MAX_SCENARIO_STEPS = 200_000


def _scenario_problem(horizon: float, dt: float, values: Mapping[str, Any]) -> str:
    """Why a what-if request cannot run ('' when it can)."""
    if not (math.isfinite(horizon) and horizon > 0):
        return f"horizon: expected seconds > 0, got {horizon!r}"
    if not (math.isfinite(dt) and dt > 0):
        return f"step: expected seconds > 0, got {dt!r}"
    if horizon / dt > MAX_SCENARIO_STEPS:
        return (f"horizon / step: {horizon / dt:.3g} steps, at most {MAX_SCENARIO_STEPS} "
                f"(a longer step or a shorter horizon)")
    bad = [name for name, v in values.items()
           if not isinstance(v, (int, float)) or not math.isfinite(v)]
    return f"{', '.join(bad)}: expected finite numbers" if bad else ""


class ScenarioPanel(_Component):
    """Setpoints, loads, parameters and a horizon → a what-if ensemble as a fan chart.

    Run projects the twin from its current estimate (``twin.whatif``) in a thread executor, so the
    loop keeps serving live data; the result's quantile bands are drawn around the mirror, with
    the limits and the first violation in red.

    Parameters
    ----------
    twin : Twin
    variable : str, optional
        The output or state charted (default: the twin's first measured variable).
    parameters : sequence of str, optional
        Model parameters offered (default none; inputs are always offered).
    limits : mapping of name to (low, high), optional
        Passed to the what-if: violations are counted and marked.
    quantiles : sequence of float, default (0.05, 0.25, 0.5, 0.75, 0.95)
    horizon, dt : float
        Seconds.
    n : int, default 50
        Random draws of the initial state (the filter's covariance).

    Examples
    --------
    >>> import twinbench as tb
    >>> src = tb.connect("opc.tcp://127.0.0.1:4840/p", {"speed": "ns=2;s=Pump1.speed"})
    >>> panel = ScenarioPanel(tb.Twin(tb.models.pump(), src, R={"speed": 4.0}))
    >>> sorted(panel.inputs)
    ['ambient_temperature', 'speed_setpoint', 'valve_opening']
    """

    def __init__(self, twin: Any, *, variable: str | None = None,
                 parameters: Sequence[str] = (), limits: Mapping[str, tuple] | None = None,
                 quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95),
                 horizon: float = 600.0, dt: float = 1.0, n: int = 50) -> None:
        model = twin.model
        self.twin = twin
        names = [*model.output_names, *model.state_names]
        self.variable = widgets.Dropdown(
            options=names, value=variable or (getattr(twin, "measured", None) or names)[0],
            description="Chart")
        if self.variable.value not in names:
            raise ValueError(f"variable: expected one of {names}, got {variable!r}")
        self.limits = dict(limits or {})
        for name in self.limits:
            if name not in names:
                raise ValueError(f"limits: {name!r} is not an output or state of the model")
        self.quantiles = tuple(float(q) for q in quantiles)
        declared = {v.name: v.default for v in model.inputs}
        self.inputs = {name: widgets.FloatText(value=float(declared[name]), description=name,
                                               style={"description_width": "10em"})
                       for name in model.input_names}
        pdefault = {p.name: p.default for p in model.params}
        for p in parameters:
            if p not in pdefault:
                raise ValueError(f"parameters: {p!r} is not a parameter of the model")
        self.parameters = {p: widgets.FloatText(value=float(pdefault[p]), description=p,
                                                style={"description_width": "10em"})
                           for p in parameters}
        self.horizon = widgets.FloatText(value=float(horizon), description="horizon [s]")
        self.dt = widgets.FloatText(value=float(dt), description="step [s]")
        self.n = widgets.BoundedIntText(value=int(n), min=1, max=100000, description="draws")
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.current_button = widgets.Button(description="Use current inputs")
        self.current_button.on_click(lambda _: self.use_current())
        self.progress = widgets.IntProgress(value=0, min=0, max=2, description="")
        self.message = widgets.HTML("")
        self.run_button.on_click(lambda _: _permitted("scenario", self.message) and _spawn(
            self.run(), self, "whatif"))
        self.chart = widgets.VBox([], layout=widgets.Layout(width="100%"))
        self.result: Any = None
        self.figure: Any = None
        self._widget = widgets.VBox([
            widgets.HTML("<b>What-if</b>"),
            widgets.HBox([widgets.VBox([*self.inputs.values(), *self.parameters.values()]),
                          widgets.VBox([self.horizon, self.dt, self.n, self.variable])]),
            widgets.HBox([self.run_button, self.current_button, self.progress]), self.message,
            self.chart], layout=widgets.Layout(width="100%"))

    def apply_role(self, who: Identity) -> None:
        """Enable Run for roles that may run scenarios (operators, engineers)."""
        self.run_button.disabled = not who.may("scenario")
        self.run_button.tooltip = "" if who.may("scenario") else f"{who} may not run scenarios"

    def use_current(self) -> None:
        """Fill the input boxes with the twin's latest inputs."""
        for name, v in self.twin.snapshot()["inputs"].items():
            self.inputs[name].value = float(v)

    def _changes(self) -> dict[str, list[float]]:
        snap = self.twin.snapshot()
        held = snap["inputs"]
        declared = {v.name: v.default for v in self.twin.model.inputs}
        changes = {}
        for name, box in self.inputs.items():
            now = held.get(name, math.nan)
            now = declared[name] if not np.isfinite(now) else now
            if not math.isclose(box.value, now, rel_tol=1e-12, abs_tol=1e-12):
                changes[name] = [float(box.value)]
        pdefault = {p.name: p.default for p in self.twin.model.params}
        params = snap["params"]
        for name, box in self.parameters.items():
            if not math.isclose(box.value, params.get(name, pdefault[name]), rel_tol=1e-12):
                changes[name] = [float(box.value)]
        return changes

    async def run(self) -> Any:
        """Run the what-if off the loop and draw its fan chart; returns the result (None when
        it failed: the message says why)."""
        horizon, dt = float(self.horizon.value), float(self.dt.value)
        # The boxes' values come from the page: checked here, whatever the page allowed.
        problem = _scenario_problem(horizon, dt, {**{k: b.value for k, b in self.inputs.items()},
                                                  **{k: b.value for k, b in
                                                     self.parameters.items()}})
        if problem:
            self.progress.value, self.progress.bar_style = 0, "danger"
            self.message.value = f"<span style='color:red'>{html.escape(problem)}</span>"
            return None
        steps = max(1, round(horizon / dt))
        every = max(1, steps // 300)  # a few hundred points per line is plenty on screen
        call = {"dt": dt, "changes": self._changes(), "n": int(self.n.value),
                "uncertainty": True, "quantiles": self.quantiles, "every": every,
                "limits": self.limits or None}
        self.progress.value, self.progress.bar_style = 1, "info"
        self.message.value = "running …"
        self.run_button.disabled = True
        loop = asyncio.get_running_loop()
        try:
            project = self._snapshot(steps * dt, call)
            result = await loop.run_in_executor(None, project)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.progress.value, self.progress.bar_style = 0, "danger"
            self.message.value = f"<span style='color:red'>{html.escape(str(exc))}</span>"
            return None
        finally:
            self.run_button.disabled = False
        self.progress.value, self.progress.bar_style = 2, "success"
        self.show(result)
        return result

    def _snapshot(self, horizon: float, call: dict[str, Any]) -> Any:
        """The projection as a callable for a worker thread, with the twin's estimate copied
        now, on the loop: the twin keeps filtering while the ensemble runs."""
        from twinbench.scenario import whatif

        snap = self.twin.snapshot()
        if snap["time"] is None:
            raise RuntimeError("no measurement yet: nothing to project from (is the twin "
                               "connected?)")
        return lambda: whatif(self.twin.model, snap["state"], horizon=horizon,
                              covariance=snap["covariance"], inputs=snap["inputs"],
                              params=snap["params"], start=snap["time"], **call)

    def show(self, result: Any) -> None:
        """Draw a what-if result."""
        self.result = result
        var = self.variable.value
        self.figure = fan_chart(result, var, limits=self.limits.get(var))
        self.chart.children = (BokehModel(self.figure),)
        notes = []
        for name in self.limits:
            flag = result.get(f"{name}_violates")
            if flag is None:
                continue
            count = int(flag.values.sum())
            if count:
                first = result[f"{name}_first_violation"].values
                first = first[~np.isnat(first)].min()
                notes.append(f"<span style='color:red'><b>{html.escape(name)}</b> leaves "
                             f"{self.limits[name]} in {count} of {flag.size} scenarios (first "
                             f"at {str(first)[:19]})</span>")
            else:
                notes.append(f"{html.escape(name)} within {self.limits[name]} in all scenarios")
        proj = result.attrs.get("projections", "")
        self.message.value = f"{proj} projections; changes: " \
                             f"{html.escape(str(result.attrs.get('changes', '')))}<br>" \
                             + "<br>".join(notes)

    @property
    def band_count(self) -> int:
        """Quantile bands in the chart drawn last (0 before a run)."""
        return 0 if self.figure is None else int(self.figure.tags[0]["bands"])


# -- control -----------------------------------------------------------------------------------


def _allowed_text(lim: Any) -> str:
    rate = "" if lim.max_rate is None else f", at most {lim.max_rate:g}/s"
    return f"<small>allowed {lim.low:g} … {lim.high:g}{rate}</small>"


class ControlPanel(_Component):
    """The guarded write path for named tags: limits, a value, Write → confirm → read-back, and
    the audit trail. Read-only unless `writable` names tags and the twin has a writer.

    Refusals (limits, rate, allow-list) and failures are shown, never retried.

    Parameters
    ----------
    twin : Twin
    writable : sequence of str
        Tags the operator may write (each must be in ``twin.writer.allow``).
    reason : str, default "operator"
        The audited reason of the panel's writes.

    Examples
    --------
    >>> import twinbench as tb
    >>> src = tb.connect("opc.tcp://127.0.0.1:4840/p", {"speed": "ns=2;s=Pump1.speed"})
    >>> ControlPanel(tb.Twin(tb.models.pump(), src, R={"speed": 4.0})).enabled
    False
    """

    def __init__(self, twin: Any, writable: Sequence[str] = (), *,
                 reason: str = "operator", audit_rows: int = 10) -> None:
        if isinstance(writable, str):
            writable = (writable,)
        self.twin = twin
        self.reason = reason
        self.audit_rows = audit_rows
        writer = getattr(twin, "writer", None)
        self.writable = list(writable)
        if self.writable and writer is None:
            raise ValueError("writable: the twin has no writer (Twin(..., writer="
                             "guarded_writer(...))); writes stay disabled")
        for tag in self.writable:
            if tag not in writer.allow:
                raise ValueError(f"writable: {tag!r} is not allowed by the twin's writer "
                                 f"(allow-list {sorted(writer.allow)})")
        self.writer = writer if self.writable else None
        self.result_html = widgets.HTML("")
        self.audit_html = widgets.HTML("")
        self.dialog = widgets.VBox([], layout=widgets.Layout(border="2px solid orange",
                                                             padding="4px", display="none"))
        self.dialog_text = widgets.HTML("")
        self.confirm_button = widgets.Button(description="Confirm", button_style="warning")
        self.cancel_button = widgets.Button(description="Cancel")
        self.confirm_button.on_click(lambda _: self._answer(True))
        self.cancel_button.on_click(lambda _: self._answer(False))
        self.dialog.children = (self.dialog_text,
                                widgets.HBox([self.confirm_button, self.cancel_button]))
        self._pending: asyncio.Future[bool] | None = None
        self.values: dict[str, widgets.FloatText] = {}
        self.buttons: dict[str, widgets.Button] = {}
        self.now_html: dict[str, widgets.HTML] = {}
        self._edited: set[str] = set()
        self._filling = False
        self.allowed_html: dict[str, widgets.HTML] = {}
        self.limit_boxes: dict[str, tuple[widgets.FloatText, widgets.FloatText]] = {}
        self.limit_rows: list[Any] = []
        rows = []
        for tag in self.writable:
            lim = writer.allow[tag]
            box = self.values[tag] = widgets.FloatText(value=float(lim.low), description=tag,
                                                       style={"description_width": "9em"},
                                                       layout=widgets.Layout(width="16em"))
            # Until the operator types a value the box follows the equipment, so a careless
            # click never proposes the low limit.
            box.observe(lambda _, t=tag: self._edited.add(t) if not self._filling else None,
                        "value")
            button = self.buttons[tag] = widgets.Button(description="Write…", icon="pencil",
                                                        layout=widgets.Layout(width="7em"))
            button.on_click(lambda _, t=tag: self._clicked(t))
            self.now_html[tag] = widgets.HTML("")
            self.allowed_html[tag] = widgets.HTML(_allowed_text(lim))
            rows.append(widgets.VBox([widgets.HBox([box, button]), self.allowed_html[tag],
                                      self.now_html[tag]]))
            # An engineer's limits editor, within the bounds the app was made with.
            low = widgets.FloatText(value=lim.low, description="limits",
                                    style={"description_width": "9em"},
                                    layout=widgets.Layout(width="14em"))
            high = widgets.FloatText(value=lim.high, layout=widgets.Layout(width="6em"))
            set_button = widgets.Button(description="Set limits",
                                        layout=widgets.Layout(width="7em"))
            set_button.on_click(lambda _, t=tag: self.set_limits(
                t, self.limit_boxes[t][0].value, self.limit_boxes[t][1].value,
                identity=request_identity()))
            self.limit_boxes[tag] = (low, high)
            self.limit_rows.append(widgets.HBox([low, high, set_button]))
        self.update()
        if self.enabled:
            self.update_audit()
            self.limits_box = widgets.VBox(self.limit_rows)
            body = [*rows, self.dialog, self.result_html, self.limits_box,
                    widgets.HTML("<i>audit trail</i>"), self.audit_html]
        else:
            self.limits_box = widgets.VBox([])
            body = [widgets.HTML("<i>read-only: writes are not enabled for this app</i>")]
        self._widget = widgets.VBox([widgets.HTML("<b>Control</b>"), *body])

    def apply_role(self, who: Identity) -> None:
        """Show the panel to roles that may write, hide it from the others (the write path
        checks the role again at every write)."""
        self._widget.layout.display = None if who.may("write") else "none"
        self.limits_box.layout.display = None if who.may("configure") else "none"

    def set_limits(self, tag: str, low: float, high: float, *,
                   identity: Identity | None = None) -> Any:
        """Narrow or restore a tag's limits within the app's bounds (engineers, in an app with
        sign-in); returns the audited result (also shown)."""
        if not self.enabled or tag not in self.writable:
            raise ValueError(f"tag: {tag!r} is not writable from this panel "
                             f"(writable: {self.writable})")
        result = self.writer.set_limits(tag, low, high, reason=f"{self.reason}: limits",
                                        identity=identity)
        colour = "green" if result.result == "limits-changed" else "red"
        self.result_html.value = (f"<span style='color:{colour}'><b>{html.escape(result.result)}"
                                  f"</b>: {html.escape(result.message)}</span>")
        self.allowed_html[tag].value = _allowed_text(self.writer.allow[tag])
        self.update_audit()
        return result

    def _clicked(self, tag: str) -> None:
        # Who clicked (the server's stamp on this very message), captured now; the writer
        # refuses and audits a role that may not write, before any confirmation.
        _spawn(self.write(tag, self.values[tag].value, identity=request_identity()), self,
               f"write {tag}")

    def _current(self, tag: str) -> float | None:
        """The tag's latest value in the twin's state (None when unknown)."""
        variable = next((v for v, t in getattr(self.twin, "tags", {}).items() if t == tag), tag)
        try:
            # a setpoint arrives only when it changes: its last known value, not the last row's
            latest = self.twin.latest(skipna=True)
            column = self.twin.column(variable) if variable in self.twin.tags else variable
        except Exception:  # noqa: BLE001 - an empty window has no latest row
            return None
        value = latest.get(column)
        return float(value) if value is not None and np.isfinite(value) else None

    def update(self) -> None:
        """Show each writable tag's current value (and put it in boxes not edited yet)."""
        for tag in self.writable:
            now = self._current(tag)
            self.now_html[tag].value = ("<small>now: unknown</small>" if now is None
                                        else f"<small>now: {now:g}</small>")
            if now is not None and tag not in self._edited:
                self._filling = True
                try:
                    self.values[tag].value = now
                finally:
                    self._filling = False

    @property
    def enabled(self) -> bool:
        """Whether the panel can write."""
        return self.writer is not None

    async def _ask(self, request: Any) -> bool:
        """The write's confirmation: show the dialog, wait for Confirm or Cancel."""
        if self._pending is not None and not self._pending.done():
            self._pending.set_result(False)  # one question at a time: the older one is dropped
        self._pending = asyncio.get_running_loop().create_future()
        self.dialog_text.value = f"<b>Confirm the write?</b><br>{html.escape(request.describe())}"
        self.dialog.layout.display = "flex"
        try:
            return await self._pending
        finally:
            self.dialog.layout.display = "none"

    def _answer(self, yes: bool) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.set_result(yes)

    @property
    def asking(self) -> bool:
        """Whether the confirmation dialog waits for an answer."""
        return self._pending is not None and not self._pending.done()

    def confirm(self) -> None:
        """Answer the dialog with Confirm (what the button does)."""
        self.confirm_button.click()

    def cancel(self) -> None:
        """Answer the dialog with Cancel."""
        self.cancel_button.click()

    async def write(self, tag: str, value: float, *, identity: Identity | None = None) -> Any:
        """Write through the twin's guarded writer, asking for confirmation in the panel;
        returns the WriteResult (also shown). `identity`: who asks (default: the sender of the
        message being handled; in an app with sign-in their role must permit writing)."""
        if not self.enabled or tag not in self.writable:
            raise ValueError(f"tag: {tag!r} is not writable from this panel "
                             f"(writable: {self.writable})")
        self.result_html.value = "…"
        result = await self.writer.write(tag, value, reason=self.reason, source="user",
                                         confirm=self._ask,
                                         identity=identity or request_identity())
        colour = {"written": "green", "dry-run": "gray"}.get(result.result, "red")
        self.result_html.value = (f"<span style='color:{colour}'><b>{html.escape(result.result)}"
                                  f"</b>: {html.escape(result.message)}</span>")
        await asyncio.to_thread(self.update_audit)
        return result

    def audit(self) -> list[dict[str, Any]]:
        """The writer's audit records, oldest first."""
        from twinbench.act import audit_log

        path = Path(self.writer.audit_path)
        return audit_log(path) if path.exists() else []

    def update_audit(self) -> None:
        """Refresh the audit trail table (newest first)."""
        if not self.enabled:
            return
        records = self.audit()[-self.audit_rows:][::-1]
        rows = [{"time": str(r.get("time", ""))[11:19], "tag": r.get("tag"),
                 "value": r.get("requested"), "read back": r.get("read_back"),
                 "result": r.get("result"), "by": r.get("user") or r.get("source")}
                for r in records]
        # the full record (message, reason) is in the audit file; the panel keeps to a glance
        self.audit_html.value = ("<div style='overflow-x:auto;font-size:smaller'>"
                                 + html_table(rows, empty="no writes yet") + "</div>")


# -- maintenance -------------------------------------------------------------------------------


class RulesPanel(_Component):
    """The twin's rules, and (for engineers, in an app with sign-in) their conditions to edit.

    A condition is text such as ``vibration > 5.5``: parsed, never evaluated; its variable must
    be one the twin has. Every change is checked in the kernel and audited (see
    :meth:`twinbench.Twin.set_rule_condition`).

    Examples
    --------
    >>> import twinbench as tb
    >>> from twinbench.act import Rule
    >>> src = tb.connect("opc.tcp://127.0.0.1:4840/p", {"vibration": "ns=2;s=Pump1.vibration"})
    >>> twin = tb.Twin(tb.models.pump(), src, R={"vibration": 0.0025},
    ...                rules=[Rule("high vibration", "vibration > 4.5")])
    >>> list(RulesPanel(twin).conditions)
    ['high vibration']
    """

    def __init__(self, twin: Any) -> None:
        self.twin = twin
        self.message = widgets.HTML("")
        self.conditions: dict[str, widgets.Text] = {}
        rows = []
        for rule in twin.rules:
            box = self.conditions[rule.name] = widgets.Text(
                value=str(rule.condition), description=rule.name,
                style={"description_width": "9em"}, layout=widgets.Layout(width="20em"))
            button = widgets.Button(description="Apply", layout=widgets.Layout(width="6em"))
            button.on_click(lambda _, n=rule.name: self.apply(
                n, self.conditions[n].value, identity=request_identity()))
            rows.append(widgets.HBox([box, button]))
        self.editor = widgets.VBox([*rows, self.message])
        body = [self.editor] if rows else [widgets.HTML("<i>no rules</i>")]
        self._widget = widgets.VBox([widgets.HTML("<b>Rules</b>"), *body])

    def apply_role(self, who: Identity) -> None:
        """Let engineers edit the conditions; others see them read-only."""
        for box in self.conditions.values():
            box.disabled = not who.may("configure")
        for row in self.editor.children[:-1]:
            row.children[1].layout.display = None if who.may("configure") else "none"

    def apply(self, name: str, condition: str, *, identity: Identity | None = None) -> Any:
        """Give rule `name` the condition `condition`; returns the audited record (also
        shown)."""
        result = self.twin.set_rule_condition(name, condition, identity=identity)
        colour = "green" if result.result == "rule-changed" else "red"
        self.message.value = (f"<span style='color:{colour}'>{html.escape(result.message)}"
                              f"</span>")
        rule = next((r for r in self.twin.rules if r.name == name), None)
        if rule is not None and name in self.conditions:
            self.conditions[name].value = str(rule.condition)
        return result


class MaintenancePanel(_Component, _Refresher):
    """RUL quantiles, the health-indicator trend, work orders and KPIs of a twin.

    Parameters
    ----------
    twin : Twin
    kpis : mapping, optional
        Arguments of :func:`twinbench.maintenance.kpis` (``output``, ``ideal_rate``,
        ``running``, ...); without them no KPI table.
    interval : float, default 2.0
        Seconds between refreshes once started.

    Examples
    --------
    >>> import twinbench as tb
    >>> src = tb.connect("opc.tcp://127.0.0.1:4840/p", {"speed": "ns=2;s=Pump1.speed"})
    >>> MaintenancePanel(tb.Twin(tb.models.pump(), src, R={"speed": 4.0})).update()
    """

    def __init__(self, twin: Any, *, kpis: Mapping[str, Any] | None = None,
                 interval: float = 2.0, max_points: int = 1000) -> None:
        if kpis is not None and not isinstance(kpis, Mapping):
            raise TypeError(f"kpis: expected a mapping of kpis() arguments, got "
                            f"{type(kpis).__name__}")
        self.twin = twin
        self.kpi_args = dict(kpis) if kpis is not None else None
        self.interval = float(interval)
        self.max_points = max_points
        self.rul_html = widgets.HTML("")
        self.orders_html = widgets.HTML("")
        self.kpi_html = widgets.HTML("")
        self.policies = list(getattr(twin, "maintenance", []))
        indicators = [p.indicator for p in self.policies]
        self.source = ColumnDataSource({"time": [], **{i: [] for i in indicators}})
        self.figure = None
        parts: list[Any] = [widgets.HTML("<b>Maintenance</b>"), self.rul_html]
        if indicators:
            fig = self.figure = figure(height=180, sizing_mode="stretch_width",
                                       x_axis_type="datetime", y_axis_label="health indicator",
                                       tools="pan,wheel_zoom,reset,save")
            for p in self.policies:
                fig.line("time", p.indicator, source=self.source, legend_label=p.indicator)
                fig.add_layout(Span(location=float(p.rul.threshold), dimension="width",
                                    line_color="red", line_dash="dashed"))
            fig.legend.location = "top_left"
            parts.append(BokehModel(fig))
        parts += [widgets.HTML("<i>work orders</i>"), self.orders_html, self.kpi_html]
        self._task: asyncio.Task[None] | None = None
        self._widget = widgets.VBox(parts)
        self.update()

    def update(self) -> None:
        """Refresh every part from the twin now."""
        rows = []
        for p in self.policies:
            est = p.latest
            if est is None or getattr(est, "time", None) is None:
                rows.append({"indicator": p.indicator, "RUL": "no estimate yet"})
                continue
            row = {"indicator": p.indicator}
            for q, r in zip(est.quantile, est.rul, strict=True):
                row[f"q{float(q):g} [h]"] = float(r) / 3600.0
            row["P(failure)"] = float(est.failure_probability)
            rows.append(row)
        self.rul_html.value = ("<i>remaining useful life</i>" + html_table(
            rows, empty="no maintenance policies") if self.policies
            else "<i>no maintenance policies</i>")
        orders = [o.to_dict() for o in getattr(self.twin, "work_orders", [])]
        cols = ["asset", "finding", "suggested_action", "due_by", "status"]
        self.orders_html.value = html_table(
            [{c: o.get(c) for c in cols} for o in orders], cols, empty="no work orders")
        state = self.twin.state if (self.figure is not None or self.kpi_args) else None
        if self.figure is not None and state is not None:
            step = max(1, state.sizes.get("time", 0) // self.max_points)
            data = {"time": state.time.values[::step].astype("datetime64[ns]").astype(
                np.int64) / 1e6}
            for p in self.policies:
                data[p.indicator] = (state[p.indicator].values[::step].astype(float)
                                     if p.indicator in state else np.full(len(data["time"]),
                                                                          np.nan))
            self.source.data = data
        if self.kpi_args:
            try:
                from twinbench.maintenance import kpis

                k = kpis(state, **self.kpi_args)
                self.kpi_html.value = "<i>KPIs</i>" + html_table(
                    [{name: float(k[name]) for name in k.data_vars}])
            except Exception as exc:  # noqa: BLE001 - e.g. an empty window: say why
                self.kpi_html.value = f"<i>KPIs unavailable: {html.escape(str(exc))}</i>"

