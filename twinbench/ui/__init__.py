"""The workbench UI: ipywidgets + Bokeh components and the Dashboard.

The only package of twinbench that imports ipywidgets and Bokeh; ``import twinbench`` does not
import it. Every component has a ``.widget`` (an ipywidget) and displays itself.
"""

from __future__ import annotations

from twinbench.ui.dashboard import Dashboard
from twinbench.ui.panels import (
    ConnectionPanel,
    ControlPanel,
    MaintenancePanel,
    RulesPanel,
    ScenarioPanel,
    TagBrowser,
)
from twinbench.ui.plots import LivePlot, fan_chart, load_bokeh

__all__ = [
    "ConnectionPanel",
    "ControlPanel",
    "Dashboard",
    "LivePlot",
    "MaintenancePanel",
    "RulesPanel",
    "ScenarioPanel",
    "TagBrowser",
    "fan_chart",
    "load_bokeh",
]
