"""What a source offers: the OPC-UA address space, or the MQTT topics seen so far, as a tree."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

__all__ = ["BrowseNode"]


@dataclasses.dataclass
class BrowseNode:
    """One node of a browse tree.

    Attributes
    ----------
    name : str
        Display name: an OPC-UA BrowseName with its namespace (``"2:Pump1"``), or one MQTT topic
        level.
    address : str or None
        What a tag map needs to read this node: a NodeId (``"ns=2;s=Pump1.speed"``) or a topic;
        None for MQTT levels no message was published to.
    kind : str
        ``"Object"``, ``"Variable"``, ``"Method"``, ... for OPC-UA; ``"topic"`` or ``"level"``
        for MQTT.
    children : list of BrowseNode
        In server (or alphabetical) order.
    info : dict
        Extra facts, e.g. the MQTT message count, the OPC-UA data type.

    Examples
    --------
    >>> tree = BrowseNode("0:Objects", "i=85", "Object", [
    ...     BrowseNode("2:Pump1", "ns=2;s=Pump1", "Object", [
    ...         BrowseNode("2:speed", "ns=2;s=Pump1.speed", "Variable"),
    ...         BrowseNode("2:run", "ns=2;s=Pump1.run", "Variable")])])
    >>> tree.variables()
    {'speed': 'ns=2;s=Pump1.speed', 'run': 'ns=2;s=Pump1.run'}
    >>> print(tree)
    0:Objects  (i=85)
    └── 2:Pump1  (ns=2;s=Pump1)
        ├── 2:speed  = ns=2;s=Pump1.speed
        └── 2:run  = ns=2;s=Pump1.run
    >>> tree.find("2:Pump1").address
    'ns=2;s=Pump1'
    """

    name: str
    address: str | None = None
    kind: str = "Object"
    children: list[BrowseNode] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def is_value(self) -> bool:
        """True for nodes that carry values (OPC-UA variables, MQTT topics with messages)."""
        return self.kind in ("Variable", "topic")

    def walk(self) -> Iterator[BrowseNode]:
        """This node and every node below it, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, name: str) -> BrowseNode | None:
        """The first node (depth first) whose name is `name`, with or without its namespace."""
        for node in self.walk():
            if node.name == name or node.name.split(":", 1)[-1] == name:
                return node
        return None

    def variables(self) -> dict[str, str]:
        """Every value-carrying node below (and including) this one: short name → address.

        The short name is the BrowseName without its namespace (the last topic level for MQTT);
        a name seen twice keeps its first address. The result is a ready tag map.
        """
        out: dict[str, str] = {}
        for node in self.walk():
            if node.is_value and node.address is not None:
                out.setdefault(node.name.split(":", 1)[-1].rsplit("/", 1)[-1], node.address)
        return out

    def _lines(self, prefix: str, last: bool, root: bool) -> Iterator[str]:
        if self.is_value:
            label = f"{self.name}  = {self.address}"
        else:
            label = self.name + (f"  ({self.address})" if self.address else "")
        if self.info.get("truncated"):
            label += "  …"
        yield label if root else prefix + ("└── " if last else "├── ") + label
        child_prefix = "" if root else prefix + ("    " if last else "│   ")
        for i, child in enumerate(self.children):
            yield from child._lines(child_prefix, i == len(self.children) - 1, False)

    def __str__(self) -> str:
        return "\n".join(self._lines("", True, True))

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))
