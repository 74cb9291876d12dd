"""Live Bokeh plots of a twin's state, streamed from the kernel's event loop.

The figures are shown through :class:`jupyter_bokeh.BokehModel` (an ipywidget), the one path that
streams live both in JupyterLab and in Voila; ``show(..., notebook_handle=True)`` with
``push_notebook`` does not work in Voila. BokehJS must be loaded inline (no CDN): see
:func:`load_bokeh`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np
from bokeh.layouts import gridplot
from bokeh.models import (
    CheckboxGroup,
    ColumnDataSource,
    CustomJS,
    Div,
    InlineStyleSheet,
    Range1d,
    Span,
)
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from jupyter_bokeh import BokehModel

__all__ = ["LivePlot", "fan_chart", "load_bokeh", "state_window", "variable_units"]

_logger = logging.getLogger(__name__)
_loaded = False


#: The BokehJS bundles :func:`load_bokeh` loads by default: the core and the widgets (the plots'
#: legend rows). Every page load carries them: inline, all five bundles weigh 3.9 MB (MathJax
#: alone 1.8 MB), twice (Bokeh publishes its loader under two MIME types), which made the
#: dashboard's page 8.3 MB; with these two it is 3.5 MB.
BOKEH_COMPONENTS = ("bokeh", "bokeh-widgets")
_ALL_COMPONENTS = ("bokeh", "bokeh-gl", "bokeh-widgets", "bokeh-tables", "bokeh-mathjax")


def load_bokeh(force: bool = False, components: Sequence[str] = BOKEH_COMPONENTS) -> None:
    """Load BokehJS into the notebook page from the installed package (inline, no CDN).

    The components call this when they are displayed; call it yourself before displaying a
    component's ``.widget`` directly. It does nothing outside IPython.

    Parameters
    ----------
    force : bool, default False
        Load again even if this kernel has loaded BokehJS already.
    components : sequence of str
        The BokehJS bundles: by default ``("bokeh", "bokeh-widgets")``. Add ``"bokeh-tables"``
        for DataTable, ``"bokeh-gl"`` for WebGL output, ``"bokeh-mathjax"`` for LaTeX labels
        (and pass ``force=True`` if BokehJS was loaded already).

    Examples
    --------
    >>> load_bokeh()  # outside a notebook: nothing to load into
    >>> load_bokeh(components=["bokeh", "bokeh-tables"])  # with DataTable
    >>> load_bokeh(components=["bokeh", "charts"])
    Traceback (most recent call last):
    ...
    ValueError: components: expected some of bokeh, bokeh-gl, bokeh-widgets, bokeh-tables, \
bokeh-mathjax, got ['charts']
    """
    global _loaded
    components = list(components)
    unknown = [c for c in components if c not in _ALL_COMPONENTS]
    if unknown or "bokeh" not in components:
        raise ValueError(f"components: expected some of {', '.join(_ALL_COMPONENTS)}, got "
                         f"{unknown or components}" + ("" if unknown else " (without 'bokeh')"))
    if _loaded and not force:
        return
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipywidgets
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return
    from bokeh.io import output_notebook
    from bokeh.resources import Resources

    output_notebook(resources=Resources(mode="inline", components=components),
                    hide_banner=True)
    if LivePlot.fast_canvas:
        from IPython.display import publish_display_data

        # The canvas patch (see LivePlot) before the first figure is drawn: BokehJS loads
        # asynchronously, so wait for it (the plots' first update applies it otherwise).
        publish_display_data({"application/javascript": _EARLY_PATCH_JS})
    _loaded = True


def variable_units(twin: Any) -> dict[str, str]:
    """Units of every column of a twin's state: model variables, their estimates, predictions,
    residuals and standard deviations.

    Examples
    --------
    >>> import twinbench as tb
    >>> src = tb.connect("opc.tcp://127.0.0.1:4840/p", {"speed": "ns=2;s=Pump1.speed"})
    >>> twin = tb.Twin(tb.models.pump(), src, R={"speed": 4.0})
    >>> variable_units(twin)["speed_residual"], variable_units(twin)["wear_std"]
    ('rpm', '1')
    """
    if isinstance(getattr(twin, "units", None), dict):
        return dict(twin.units)
    model = twin.model
    units = {v.name: v.units for v in (*model.inputs, *model.outputs, *model.states)}
    for name, unit in list(units.items()):
        for suffix in ("_std", "_residual", "_predicted", "_measured"):
            units[name + suffix] = unit
    return units


def state_window(twin: Any, start_ns: int | None = None) -> Any:
    """The twin's state from `start_ns` (inclusive, ns since the epoch) on, as a Dataset.

    Reads only the live window (``twin.live_window``), never the stored history, so a plot tick
    costs the new rows, not the whole window.
    """
    start = None if start_ns is None else np.datetime64(int(start_ns), "ns")
    if callable(getattr(twin, "live_window", None)):
        return twin.live_window(start, None)
    state = twin.state
    return state if start is None else state.sel(time=slice(start, None))


def _series(twin: Any, variable: str) -> dict[str, str | None]:
    """Which state columns show `variable`: measured values, the estimate and its std."""
    model = twin.model
    measured = twin.column(variable) if variable in getattr(twin, "tags", {}) else None
    if variable in model.state_names:
        return {"measured": measured, "estimate": variable, "std": f"{variable}_std"}
    if variable in model.output_names:
        return {"measured": measured, "estimate": f"{variable}_predicted", "std": None}
    if variable in model.input_names:
        return {"measured": measured, "estimate": None, "std": None}
    raise ValueError(f"variables: {variable!r} is not a variable of the model (inputs "
                     f"{list(model.input_names)}, outputs {list(model.output_names)}, states "
                     f"{list(model.state_names)})")


def _decimate(t_ns: np.ndarray, bin_ns: int, after_bin: int | None) -> tuple[np.ndarray, int | None]:
    """Row indices keeping the first row of every time bin later than `after_bin`.

    Time-bin striding keeps the plotted rate bounded whatever the data rate, so `max_points`
    always spans the whole window; alarms are kept by taking their maximum over the bin.
    """
    if len(t_ns) == 0:
        return np.empty(0, np.intp), after_bin
    bins = t_ns // bin_ns
    first = np.ones(len(bins), bool)
    first[1:] = bins[1:] != bins[:-1]
    if after_bin is not None:
        first &= bins > after_bin
    keep = np.flatnonzero(first)
    return keep, (int(bins[-1]) if after_bin is None else max(after_bin, int(bins[-1])))


class LivePlot:
    """Measured values against the twin's estimate (±2σ), residuals and alarms, streamed live.

    One figure per unit (variables sharing units share axes), a residuals figure and, when the
    twin has detectors, an alarms figure. ``start()`` runs one asyncio task on the running loop
    that streams the twin's new rows every ``1 / rate_hz`` seconds; rows are decimated by time
    bins of ``window / max_points`` seconds and the sources roll over at `max_points`, so a long
    window stays light in the browser.

    Parameters
    ----------
    twin : Twin
    variables : sequence of str, optional
        Model variables to plot (default: the twin's measured variables).
    window : float, default 120
        Seconds shown (with `max_points`, this sets the finest time step drawn: window /
        max_points, 60 ms by default, so a 10 Hz signal is drawn at its own rate).
    rate_hz : float, default 10
        Refresh rate.
    max_points : int, default 2000
        Most rows kept per source.
    max_unacked : int, default 4
        Updates sent to the page and not yet painted there, at most (see Notes).

    Notes
    -----
    Stream events sent before a browser view exists are lost, so the plot resends its whole
    window when a view attaches (it watches the widgets' view count) and when it is displayed
    with ``display(plot)``; call :meth:`refresh` after displaying ``plot.widget`` elsewhere.

    Flow control: each view acknowledges every update once it has painted it, and while a
    view is displayed the plot keeps at most `max_unacked` updates in flight. A page that falls
    behind (a busy or slow machine, a hidden tab) then gets fewer, larger updates instead of a
    backlog that would also hold up every other widget's messages behind it.

    Drawing cost: at 10 Hz the page, not the kernel, is the limit (software rendering on a
    machine without a GPU). Legends are checkbox rows above the figures (click to show or hide
    a variable) rather than Bokeh legends on the canvas, and, while :attr:`fast_canvas` is
    true, the page's BokehJS is told to take canvas colours and fonts from the figures' own
    properties instead of looking up CSS variables at every paint (bokeh/bokeh#15286): in the
    dashboard this about doubled the updates per second the page could draw.

    Examples
    --------
    >>> import twinbench as tb
    >>> src = tb.connect("opc.tcp://127.0.0.1:4840/p", {"speed": "ns=2;s=Pump1.speed",
    ...                  "power": "ns=2;s=Pump1.power"})
    >>> twin = tb.Twin(tb.models.pump(), src, R={"speed": 4.0, "power": 0.04})
    >>> plot = LivePlot(twin)
    >>> sorted(plot.figures), plot.point_count
    (['kW', 'rpm'], 0)
    """

    #: Patch the page's BokehJS to skip CSS-variable lookups for canvas visuals (see Notes).
    #: Set ``LivePlot.fast_canvas = False`` before making plots to keep BokehJS as it is (for
    #: canvases styled with ``--bk-*`` CSS variables); the patch applies to the whole page.
    fast_canvas: bool = True

    def __init__(self, twin: Any, variables: Sequence[str] | None = None, *,
                 window: float = 120.0, rate_hz: float = 10.0, max_points: int = 2000,
                 max_unacked: int = 4) -> None:
        if not hasattr(twin, "model") or not hasattr(twin, "state"):
            raise TypeError(f"twin: expected a twinbench Twin, got {type(twin).__name__}")
        if not (isinstance(window, (int, float)) and window > 0):
            raise ValueError(f"window: expected seconds > 0, got {window!r}")
        if not (isinstance(rate_hz, (int, float)) and 0 < rate_hz <= 60):
            raise ValueError(f"rate_hz: expected a rate in (0, 60], got {rate_hz!r}")
        if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 10:
            raise ValueError(f"max_points: expected an int >= 10, got {max_points!r}")
        if isinstance(max_unacked, bool) or not isinstance(max_unacked, int) or max_unacked < 1:
            raise ValueError(f"max_unacked: expected an int >= 1, got {max_unacked!r}")
        self.twin = twin
        self.max_unacked = max_unacked
        variables = list(getattr(twin, "measured", []) if variables is None else variables)
        if isinstance(variables, str) or not variables:
            raise ValueError("variables: expected a non-empty sequence of model variable names")
        self.variables = variables
        self.window = float(window)
        self.rate_hz = float(rate_hz)
        self.max_points = max_points
        self._bin_ns = max(1, int(self.window * 1e9 / max_points))
        self._series = {v: _series(twin, v) for v in variables}
        units = variable_units(twin)
        model = twin.model
        known = {v.name: v.units for v in (*model.inputs, *model.outputs, *model.states)}
        self._residuals = [v for v in variables if v in getattr(twin, "measured", [])]
        self._alarms = list(getattr(twin, "alarm_names", []))
        # One source for every figure: shared x range, one stream call per tick.
        data: dict[str, list[float]] = {"time": []}
        for spec in self._series.values():
            for kind in ("measured", "estimate"):
                if spec[kind]:
                    data[spec[kind]] = []
            if spec["std"]:
                data[f"{spec['estimate']}_lo"] = []
                data[f"{spec['estimate']}_hi"] = []
        for v in self._residuals:
            data[f"{v}_residual"] = []
        for alarm in self._alarms:
            data[alarm] = []
            data[f"{alarm}_y"] = []  # the alarm's row in the alarms figure; NaN when clear
        self.source = ColumnDataSource(data=data)
        self.figures: dict[str, Any] = {}
        # Legends are checkbox rows above each figure, not Bokeh Legends: a Legend is drawn on
        # the canvas at every paint (with DOM reads and a layer per paint), which cost the
        # page about a fifth of its time at 10 Hz; a checkbox row is drawn once.
        entries: dict[str, list[tuple[str, str, list[Any]]]] = {}
        first = None
        for i, (var, spec) in enumerate(self._series.items()):
            unit = known.get(var) or units.get(spec["estimate"] or "", "")
            fig = self.figures.get(unit)
            if fig is None:
                fig = self.figures[unit] = self._figure(unit or "value", first)
                first = first or fig
            color = Category10_10[i % 10]
            drawn = []
            if spec["std"]:
                drawn.append(fig.varea(x="time", y1=f"{spec['estimate']}_lo",
                                       y2=f"{spec['estimate']}_hi", source=self.source,
                                       fill_color=color, fill_alpha=0.15))
            if spec["estimate"]:
                drawn.append(fig.line(x="time", y=spec["estimate"], source=self.source,
                                      color=color, line_width=2))
            if spec["measured"]:
                drawn.append(fig.scatter(x="time", y=spec["measured"], source=self.source,
                                         color=color, size=3, alpha=0.6))
            entries.setdefault(unit, []).append((var, color, drawn))
        # Residuals in units of their measurement noise σ (sqrt of R): one axis for all of them
        # without mixing units, and ±3 reads the same for every tag.
        self._noise = _noise_std(twin, self._residuals)
        self.residual_figure = None
        residual_entries = []
        if self._residuals:
            fig = self.residual_figure = self._figure("residual / σ", first)
            for i, v in enumerate(self._residuals):
                color = Category10_10[list(self._series).index(v) % 10]
                residual_entries.append((v, color, [fig.line(
                    x="time", y=f"{v}_residual", source=self.source, color=color)]))
            for level in (-3, 0, 3):
                fig.add_layout(Span(location=level, dimension="width", line_color="gray",
                                    line_dash="dashed"))
        self.alarm_figure = None
        if self._alarms:
            fig = self.alarm_figure = self._figure("alarms", first, height=60 + 25 * len(
                self._alarms))
            for alarm in self._alarms:
                fig.scatter(x="time", y=f"{alarm}_y", source=self.source, marker="triangle",
                            color="red", size=8)
            # one row per alarm, named on the axis
            fig.yaxis.ticker = list(range(len(self._alarms)))
            fig.yaxis.major_label_overrides = {i: a for i, a in enumerate(self._alarms)}
            fig.yaxis.axis_label = None
            fig.y_range = Range1d(-0.7, len(self._alarms) - 0.3)
        #: The checkbox row that shows and hides each figure's variables, per figure.
        self.legends: dict[Any, Any] = {}
        for unit, fig in self.figures.items():
            self.legends[fig] = _legend(entries[unit])
        if self.residual_figure is not None:
            self.legends[self.residual_figure] = _legend(residual_entries)
        # The figures share one time axis: only the bottom one labels it (each axis's labels
        # are measured and drawn in software at every paint).
        for fig in self._all_figures()[:-1]:
            fig.xaxis.visible = False
            fig.min_border_bottom = 4
        key = Div(text=_KEY_HTML, styles={"font-size": "12px", "color": "#555"})
        rows: list[Any] = [key]
        for fig in self._all_figures():
            if fig in self.legends:
                rows.append(self.legends[fig])
            rows.append(fig)
        # One Bokeh document for all figures: they share the source and the x range, and a
        # Bokeh model can belong to one document only.
        # One toolbar for all figures (a tool acts on all of them): forty toolbar buttons
        # cost the page's first render more than the figures' frames.
        self.layout = gridplot([[r] for r in rows], merge_tools=True, toolbar_location="right",
                               sizing_mode="stretch_width")
        # The page's acknowledgement: after painting an update, each view writes the update's
        # sequence number into the tags of a model that draws nothing (a property change of
        # the layout would lay out every figure again), which comes back to the kernel.
        self._sent_seq = 0
        self._acked_seq = 0
        self._acked_at = 0.0
        self._primed_at = -math.inf
        self.source.tags = [0]
        self._ack = CustomJS(code="", tags=[0])
        for event in ("streaming", "data"):
            self.source.js_on_change(event, CustomJS(args={"source": self.source,
                                                           "ack": self._ack,
                                                           "fast_canvas": self.fast_canvas},
                                                     code=_ACK_JS))
        self._ack.on_change("tags", self._on_ack)
        self.model = BokehModel(self.layout)
        # ipywidgets counts views only when asked to (None: not tracked).
        with contextlib.suppress(Exception):
            self.model._view_count = 0
            self.model.observe(self._on_views, "_view_count")
        self._widget = widgets.VBox([self.model], layout=widgets.Layout(width="100%"))
        self._task: asyncio.Task[None] | None = None
        self._last_ns: int | None = None
        self._last_bin: int | None = None

    def _figure(self, y_label: str, shared: Any, height: int = 220) -> Any:
        shared_range = {} if shared is None else {"x_range": shared.x_range}
        return figure(height=height, sizing_mode="stretch_width", x_axis_type="datetime",
                      y_axis_label=y_label, tools="pan,wheel_zoom,box_zoom,reset,save",
                      **shared_range)

    def _all_figures(self) -> list[Any]:
        return [*self.figures.values(),
                *(f for f in (self.residual_figure, self.alarm_figure) if f is not None)]

    # -- data ----------------------------------------------------------------------------------

    def _rows(self, ds: Any, after_bin: int | None) -> tuple[dict[str, np.ndarray], int | None]:
        t_ns = ds.time.values.astype("datetime64[ns]").astype(np.int64)
        keep, last_bin = _decimate(t_ns, self._bin_ns, after_bin)
        out: dict[str, np.ndarray] = {"time": t_ns[keep] / 1e6}  # Bokeh datetimes: ms
        for spec in self._series.values():
            for kind in ("measured", "estimate"):
                name = spec[kind]
                if name:
                    out[name] = _column(ds, name, keep)
            if spec["std"]:
                est, sd = _column(ds, spec["estimate"], keep), _column(ds, spec["std"], keep)
                out[f"{spec['estimate']}_lo"] = est - 2 * sd
                out[f"{spec['estimate']}_hi"] = est + 2 * sd
        for v in self._residuals:
            out[f"{v}_residual"] = _column(ds, f"{v}_residual", keep) / self._noise[v]
        if self._alarms and len(keep):
            for i, alarm in enumerate(self._alarms):
                values = np.nan_to_num(_column(ds, alarm, None), nan=0.0)
                raised = np.maximum.reduceat(values, keep) if len(values) else values
                out[alarm] = raised
                out[f"{alarm}_y"] = np.where(raised > 0, float(i), np.nan)
        elif self._alarms:
            for alarm in self._alarms:
                out[alarm] = out[f"{alarm}_y"] = np.empty(0)
        return out, last_bin

    def refresh(self) -> None:
        """Resend the whole window (decimated): for a view that attached after the stream began."""
        ds = state_window(self.twin)
        if ds.sizes.get("time", 0):
            t_end = int(ds.time.values[-1].astype("datetime64[ns]").astype(np.int64))
            ds = state_window(self.twin, t_end - int(self.window * 1e9))
            rows, self._last_bin = self._rows(ds, None)
            self._last_ns = t_end
        else:
            rows = {k: np.empty(0) for k in self.source.data}
        self._next_seq()
        # JSON lists: one message (column buffers cost the page a message each)
        self.source.data = {k: np.asarray(rows[k][-self.max_points:]).tolist()
                            for k in self.source.data}

    def update(self) -> int:
        """Stream the rows the twin added since the last update; returns the rows sent (0 also
        while the page has not painted the earlier updates: the rows wait for the next tick)."""
        if self._last_ns is None:
            self.refresh()
            return self.point_count
        if self.waiting_for_page:
            return 0
        ds = state_window(self.twin, self._last_ns + 1)
        n = ds.sizes.get("time", 0)
        if not n:
            return 0
        self._last_ns = int(ds.time.values[-1].astype("datetime64[ns]").astype(np.int64))
        rows, self._last_bin = self._rows(ds, self._last_bin)
        sent = len(rows["time"])
        if sent:
            self._next_seq()
            # A tick's few rows go as JSON lists: one message instead of one per column buffer.
            small = {k: v.tolist() for k, v in rows.items()} if sent <= 64 else rows
            self.source.stream(small, rollover=self.max_points)
        return sent

    #: Seconds between two :meth:`prime` calls of the live task while no view is attached
    #: (a call serialises every figure: ~0.3 s of the loop on a 2-core machine).
    PRIME_INTERVAL = 30.0

    def prime(self) -> None:
        """Put the current window into the widget's initial state, for the next view.

        A page that opens (Voila's next visitor, a notebook reopened) then draws the plot in its
        first render, with data at most ``PRIME_INTERVAL`` seconds old, instead of after a
        round trip to the kernel; the view brings it up to date as soon as it attaches. The
        live task calls this while no view is attached.
        """
        doc = self.layout.document
        doc.remove_on_change(self.model)  # no view to patch: only the initial state changes
        try:
            self.refresh()
        finally:
            doc.on_change_dispatch_to(self.model)
        self.model.render_bundle = BokehModel._model_to_traits(self.layout)
        self._primed_at = time.monotonic()

    # -- flow control --------------------------------------------------------------------------

    #: Seconds without an acknowledgement after which the plot streams again anyway (a view
    #: closed without telling, a front end that runs no JavaScript).
    ACK_TIMEOUT = 5.0

    def _next_seq(self) -> None:
        self._sent_seq += 1
        self.source.tags = [self._sent_seq]  # the number the page sends back once painted
        if self._acked_seq >= self._sent_seq - 1:
            self._acked_at = time.monotonic()  # the timeout counts from the first one unacked

    def _on_ack(self, attr: str, old: Any, new: Any) -> None:
        try:
            seq = int(new[0])
        except (TypeError, ValueError, IndexError):
            return
        if seq > self._acked_seq:
            self._acked_seq = min(seq, self._sent_seq)
            self._acked_at = time.monotonic()

    @property
    def unacked(self) -> int:
        """Updates sent that no view has reported painted yet."""
        return self._sent_seq - self._acked_seq

    @property
    def waiting_for_page(self) -> bool:
        """Whether the next update waits for the page (views attached, `max_unacked` updates in
        flight, the last acknowledgement less than ``ACK_TIMEOUT`` seconds ago)."""
        views = getattr(self.model, "_view_count", None) or 0
        return (views > 0 and self.unacked >= self.max_unacked
                and time.monotonic() - self._acked_at < self.ACK_TIMEOUT)

    @property
    def point_count(self) -> int:
        """Rows currently in the plot's source."""
        return len(self.source.data["time"])

    # -- live ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        period = 1.0 / self.rate_hz
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                # With no view attached the stream would be lost, or (in Voila, while the page
                # loads) queued for the page to wade through: a view that attaches gets the
                # whole window instead.
                if getattr(self.model, "_view_count", None) != 0:
                    self.update()
                elif (time.monotonic() - self._primed_at >= self.PRIME_INTERVAL
                      and getattr(self.twin, "stats", {}).get("steps", 1)):
                    self.prime()
            except Exception:  # a bad tick is logged; the plot keeps going
                _logger.exception("LivePlot: update failed")
            # Ticks on a fixed schedule (a sleep of one period after the work would drift
            # below rate_hz); a late tick is not caught up with a burst.
            next_at = max(next_at + period, loop.time())
            await asyncio.sleep(next_at - loop.time())

    def start(self) -> LivePlot:
        """Stream on the running event loop; starting a running plot does nothing."""
        if self.running:
            return self
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="twinbench LivePlot")
        return self

    def stop(self) -> None:
        """Stop streaming (the figures keep what they show)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _on_views(self, change: Any) -> None:
        if (change.get("new") or 0) > (change.get("old") or 0):
            self.refresh()

    @property
    def widget(self) -> Any:
        """The ipywidget to display."""
        return self._widget

    def _ipython_display_(self) -> None:
        from IPython.display import display

        load_bokeh()
        self.refresh()
        display(self._widget)


_KEY_HTML = ("dots: measured &nbsp;·&nbsp; line: twin estimate &nbsp;·&nbsp; band: ±2σ of the "
             "estimate &nbsp;·&nbsp; residuals in units of the measurement noise σ")


def _legend(entries: Sequence[tuple[str, str, list[Any]]]) -> Any:
    """A checkbox per entry (name, colour, renderers) that shows or hides its renderers."""
    css = "".join(
        f"label:nth-child({i + 1}) input{{accent-color:{color}}}"
        f"label:nth-child({i + 1}) span::before{{content:'';display:inline-block;width:14px;"
        f"height:3px;margin:0 4px 2px 0;vertical-align:middle;background:{color}}}"
        for i, (_, color, _) in enumerate(entries))
    group = CheckboxGroup(labels=[name for name, _, _ in entries], active=list(range(len(entries))),
                          inline=True, stylesheets=[InlineStyleSheet(css=css)],
                          sizing_mode="stretch_width", margin=(0, 5, 0, 5))
    group.js_on_change("active", CustomJS(args={"groups": [r for _, _, r in entries]}, code="""
groups.forEach((renderers, i) => {
  const on = cb_obj.active.includes(i);
  for (const r of renderers) r.visible = on;
});
"""))
    return group


# BokehJS 3.9 reads every visual property (each colour, width, font of every glyph, axis,
# grid and label, at every paint) from the CSS cascade before the model's value, through
# getComputedStyle (bokeh/bokeh#15286): at 10 Hz that was most of the page's time. LivePlot
# styles its canvases from the model only, so the page is patched to skip those reads (and to
# read a plot's base font size once per task). Returns what it did: "applied", or why not.
_FAST_CANVAS_JS = """() => {
  try {
    const VP = Bokeh.require("core/visuals/visual").VisualProperties;
    const PV = Bokeh.require("models/plots/plot_canvas").PlotView;
    let proto = PV.prototype, desc;
    while (proto && !(desc = Object.getOwnPropertyDescriptor(proto, "base_font_size")))
      proto = Object.getPrototypeOf(proto);
    if (typeof VP.prototype._get_css_value !== "function" || !desc || !desc.get)
      return "skipped: BokehJS internals differ";
    VP.prototype._get_css_value = function (name) { return ""; };
    const font = desc.get;
    Object.defineProperty(PV.prototype, "base_font_size", {configurable: true, get() {
      if (this.__twinbenchFont === undefined) {
        this.__twinbenchFont = font.call(this);
        setTimeout(() => { this.__twinbenchFont = undefined; }, 0);
      }
      return this.__twinbenchFont;
    }});
    return "applied";
  } catch (e) {
    return "skipped: " + e;
  }
}"""


# Published by load_bokeh: applies the canvas patch as soon as BokehJS has loaded.
_EARLY_PATCH_JS = """
(function wait(tries) {
  if (window.__twinbenchCanvasPatch !== undefined) return;
  if (window.Bokeh && window.Bokeh.require) {
    window.__twinbenchCanvasPatch = (FAST_CANVAS_JS)();
  } else if (tries < 1200) {
    setTimeout(() => wait(tries + 1), 25);
  }
})(0);
""".replace("FAST_CANVAS_JS", _FAST_CANVAS_JS)

# Runs in the page after BokehJS applied a stream (or a new window): once the frame is painted
# (the timeout after the next animation frame), the page writes the update's number into the
# ack model's tags; jupyter_bokeh sends that change to the kernel (LivePlot._on_ack).
_ACK_JS = """
if (window.__twinbenchCanvasPatch === undefined && fast_canvas) {
  window.__twinbenchCanvasPatch = (FAST_CANVAS_JS)();
}
const seq = source.tags.length ? source.tags[0] : 0;
requestAnimationFrame(() => setTimeout(() => {
  if (!ack.tags.length || ack.tags[0] < seq) ack.tags = [seq];
}, 0));
""".replace("FAST_CANVAS_JS", _FAST_CANVAS_JS)


def _noise_std(twin: Any, measured: Sequence[str]) -> dict[str, float]:
    """Measurement noise standard deviation per measured variable (1 where unknown)."""
    variances = getattr(twin, "noise", {})
    return {v: math.sqrt(variances[v]) if variances.get(v, 0) > 0 else 1.0 for v in measured}


def _column(ds: Any, name: str, keep: np.ndarray | None) -> np.ndarray:
    if name not in ds:
        n = ds.sizes.get("time", 0) if keep is None else len(keep)
        return np.full(n, np.nan)
    values = ds[name].values.astype(float)
    return values if keep is None else values[keep]


def fan_chart(result: Any, variable: str, *, title: str | None = None,
              limits: tuple[float | None, float | None] | None = None) -> Any:
    """A fan chart of a what-if result: quantile bands of the projections around the median,
    the mirror (scenario 0) as a line, limits and first violations marked.

    Parameters
    ----------
    result : xarray.Dataset
        What :func:`twinbench.scenario.whatif` (or ``twin.whatif``) returns.
    variable : str
        A state or output of the result (it needs ``<variable>_quantiles``).
    title : str, optional
    limits : (low, high), optional
        Drawn as dashed lines.

    Returns
    -------
    bokeh.plotting.figure
        ``fig.tags[0]`` is ``{"bands": <quantile bands drawn>, "variable": variable}``.

    Examples
    --------
    >>> import twinbench as tb
    >>> res = tb.whatif(tb.models.pump(), None, horizon=60, dt=1.0, n=20, uncertainty=True,
    ...                 covariance=[1.0, 1e-8, 1.0, 1e-4], seed=1)
    >>> fan_chart(res, "speed").tags[0]["bands"]
    1
    """
    q_name = f"{variable}_quantiles"
    if variable not in result or q_name not in result:
        raise ValueError(f"variable: {variable!r} has no quantiles in the result; expected one "
                         f"of {sorted(k[:-10] for k in result.data_vars if k.endswith('_quantiles'))}")
    t = result.time.values.astype("datetime64[ns]").astype(np.int64) / 1e6
    levels = [float(q) for q in result["quantile"].values]
    qv = result[q_name].transpose("quantile", "time").values
    unit = result[variable].attrs.get("units", "")
    fig = figure(height=260, sizing_mode="stretch_width", x_axis_type="datetime",
                 title=title or f"what-if: {variable}", y_axis_label=f"{variable} [{unit}]",
                 tools="pan,wheel_zoom,box_zoom,reset,save")
    n_pairs = len(levels) // 2
    for i in range(n_pairs):
        lo, hi = qv[i], qv[len(levels) - 1 - i]
        alpha = 0.15 + 0.25 * i / max(1, n_pairs)
        fig.varea(x=t, y1=lo, y2=hi, fill_color="steelblue", fill_alpha=alpha,
                  legend_label=f"{levels[i]:g}–{levels[len(levels) - 1 - i]:g}")
    if len(levels) % 2:
        fig.line(t, qv[len(levels) // 2], color="steelblue", line_width=2,
                 legend_label=f"median ({levels[len(levels) // 2]:g})")
    mirror = int(result.attrs.get("mirror_scenario", 0))
    fig.line(t, result[variable].sel(scenario=mirror).values, color="black", line_dash="dashed",
             line_width=2, legend_label="mirror")
    for bound in (limits or ()):
        if bound is not None:
            fig.add_layout(Span(location=float(bound), dimension="width", line_color="red",
                                line_dash="dotted", line_width=2))
    first = f"{variable}_first_violation"
    if first in result:
        times = result[first].values
        times = times[~np.isnat(times)]
        if len(times):
            fig.add_layout(Span(location=float(times.min().astype("datetime64[ns]").astype(
                np.int64) / 1e6), dimension="height", line_color="red", line_width=2))
    fig.legend.location = "top_left"
    fig.legend.label_text_font_size = "8pt"
    fig.tags = [{"bands": n_pairs, "variable": variable}]
    return fig
