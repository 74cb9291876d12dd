"""The Dashboard: a twin's components laid out as an app (JupyterLab or Voila)."""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets

from twinbench import session
from twinbench.ui.panels import (
    ConnectionPanel,
    ControlPanel,
    MaintenancePanel,
    RulesPanel,
    ScenarioPanel,
)
from twinbench.ui.plots import LivePlot, load_bokeh

__all__ = ["Dashboard"]

_logger = logging.getLogger(__name__)


class Dashboard:
    """A twin as an app: header (title, status, alarms), sidebar (connection, control,
    maintenance), main area (live plot, what-if).

    Writes stay disabled unless `writable` names tags (which the twin's writer must allow).

    In an app with sign-in (see :mod:`twinbench.session`), the page's user and role show in
    the header, and the panels follow the role: viewers see everything and change nothing,
    operators also write allow-listed tags and run scenarios, engineers also change limits,
    rules' conditions, the connection and the tag map. Until the page's first message says who is looking, the dashboard
    shows the viewer's view. Every write and scenario run checks the role again in the kernel.

    Parameters
    ----------
    twin : Twin
    writable : sequence of str
        Tags the operator may write from the control panel.
    title : str, optional
    plot_variables : sequence of str, optional
        Variables of the live plot (default: the twin's measured variables).
    window, rate_hz, max_points
        Passed to :class:`~twinbench.ui.plots.LivePlot`.
    scenario, kpis : mapping, optional
        Keyword arguments of :class:`~twinbench.ui.panels.ScenarioPanel` and the KPI arguments
        of :class:`~twinbench.ui.panels.MaintenancePanel`.

    Examples
    --------
    >>> import twinbench as tb
    >>> src = tb.connect("opc.tcp://127.0.0.1:4840/p", {"speed": "ns=2;s=Pump1.speed"})
    >>> dash = Dashboard(tb.Twin(tb.models.pump(), src, R={"speed": 4.0}), title="Pump 1")
    >>> type(dash.widget).__name__, dash.control.enabled
    ('AppLayout', False)
    """

    def __init__(self, twin: Any, *, writable: Sequence[str] = (), title: str | None = None,
                 plot_variables: Sequence[str] | None = None, window: float = 120.0,
                 rate_hz: float = 10.0, max_points: int = 2000,
                 scenario: Mapping[str, Any] | None = None,
                 kpis: Mapping[str, Any] | None = None, interval: float = 1.0) -> None:
        self.twin = twin
        self.title = title or f"Twin {getattr(twin, 'name', '')}".strip()
        self.interval = float(interval)
        self.plot = LivePlot(twin, plot_variables, window=window, rate_hz=rate_hz,
                             max_points=max_points)
        self.connection = ConnectionPanel(getattr(twin, "source", None), interval=interval)
        self.control = ControlPanel(twin, writable)
        self.rules = RulesPanel(twin)
        self.maintenance = MaintenancePanel(twin, kpis=kpis)
        self.scenario = ScenarioPanel(twin, **dict(scenario or {}))
        #: Who is looking (None until the page's first message in an app with sign-in).
        self.identity: session.Identity | None = None
        self.header_html = widgets.HTML(self._header())
        self._task: asyncio.Task[None] | None = None
        self._widget = widgets.AppLayout(
            header=self.header_html,
            left_sidebar=widgets.VBox([self.connection.widget, self.control.widget,
                                       self.rules.widget, self.maintenance.widget],
                                      layout=widgets.Layout(overflow="auto")),
            center=widgets.VBox([self.plot.widget, self.scenario.widget],
                                layout=widgets.Layout(overflow="auto")),
            pane_widths=["420px", 1, 0], pane_heights=["60px", 1, 0],
            layout=widgets.Layout(width="100%"))
        self._apply_role(session.Identity("nobody yet", "viewer", True))
        self._unwatch = session.watch(self._on_identity)

    def _apply_role(self, who: session.Identity) -> None:
        for panel in (self.connection, self.control, self.rules, self.scenario):
            panel.apply_role(who)

    def _on_identity(self, who: session.Identity) -> None:
        self.identity = who
        self._apply_role(who)
        self.header_html.value = self._header()

    def _header(self) -> str:
        twin = self.twin
        running = getattr(twin, "running", False)
        alarms = [a for a, on in getattr(twin, "alarms", {}).items() if on]
        stats = getattr(twin, "stats", {})
        alarm_text = (f"<span style='color:white;background:#c00;padding:2px 6px'>"
                      f"{html.escape(', '.join(alarms))}</span>" if alarms
                      else "<span style='color:green'>no alarms</span>")
        who = self.identity
        signed = ""
        if who is not None and who.signed_in:
            # what the kernel allows this page (the template's header has the sign-out link)
            signed = (f"<span style='margin-left:auto'><b>{html.escape(who.user)}</b> · "
                      f"{html.escape(who.role or 'no role')} view</span>")
        return (f"<div style='display:flex;gap:2em;align-items:center'>"
                f"<h2 style='margin:0'>{html.escape(self.title)}</h2>"
                f"<span>{'● running' if running else '○ stopped'}; "
                f"{stats.get('samples', 0)} samples</span>{alarm_text}{signed}</div>")

    def update(self) -> None:
        """Refresh the header and the control panel's current values now."""
        self.header_html.value = self._header()
        self.control.update()

    async def _run(self) -> None:
        while True:
            try:
                self.update()
            except Exception:  # the header must not stop refreshing
                _logger.exception("Dashboard: header refresh failed")
            await asyncio.sleep(self.interval)

    def start(self, *, twin: bool = True) -> Dashboard:
        """Start the live parts (plot, status, maintenance, header) on the running loop, and the
        twin itself unless ``twin=False``. Idempotent: re-running the cell starts nothing twice.
        """
        if twin and not getattr(self.twin, "running", True):
            self.twin.start()
        if self._unwatch is None:
            self._unwatch = session.watch(self._on_identity)
        self.plot.start()
        self.connection.start()
        self.maintenance.start()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def stop(self) -> None:
        """Stop the live parts (not the twin: ``await twin.stop()``)."""
        if self._unwatch is not None:  # a re-run cell's new dashboard watches instead
            self._unwatch()
            self._unwatch = None
        self.plot.stop()
        self.connection.stop()
        self.maintenance.stop()
        if self._task is not None:
            self._task.cancel()
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def widget(self) -> Any:
        """The ipywidget to display (an ``AppLayout``)."""
        return self._widget

    def _ipython_display_(self) -> None:
        from IPython.display import display

        load_bokeh()
        self.plot.refresh()
        display(self._widget)
