"""Sources: the data connection between equipment and the twin.

:func:`connect` opens a live source by URL (``opc.tcp://``, ``mqtt://``, ``mqtts://``);
:func:`replay` plays a recording back through the same interface. Every source has ``start()`` /
``stop()`` (async, with ``start_sync()`` / ``stop_sync()`` for notebook cells), ``read()`` and the
async iterator ``batches()`` of columnar :class:`~twinbench.io.batch.Batch` es, ``write()``,
``browse()``, ``read_latest()`` and ``status``.
"""

from __future__ import annotations

from typing import Any

from twinbench.io._common import WriteRejected
from twinbench.io.batch import Batch, Quality
from twinbench.io.browse import BrowseNode
from twinbench.io.replay import replay
from twinbench.io.tags import TagMap, tag_map

__all__ = ["Batch", "BrowseNode", "Quality", "TagMap", "WriteRejected", "connect", "replay",
           "tag_map"]

SCHEMES = {"opc.tcp": "OPC-UA", "mqtt": "MQTT", "mqtts": "MQTT over TLS"}


def connect(url: str, tags: Any, **options: Any) -> Any:
    """A live source for `url`, not yet connected: ``await src.start()`` (or ``src.start_sync()``).

    Parameters
    ----------
    url : str
        ``opc.tcp://host:port[/path]`` → :func:`~twinbench.io.opcua.opcua_source`;
        ``mqtt://host:port`` or ``mqtts://host:port`` → :func:`~twinbench.io.mqtt.mqtt_source`.
    tags : TagMap, mapping, list of entries, or path of a YAML/JSON tag-map file
        Twin variable names to addresses (see :func:`~twinbench.io.tags.tag_map`).
    **options
        Passed to the source's factory (security, intervals, decoder, credentials, ...).

    Returns
    -------
    OpcUaSource or MqttSource
        Also an async context manager: ``async with connect(...) as src:`` starts and stops it.

    Examples
    --------
    >>> src = connect("opc.tcp://127.0.0.1:4840/twinbench/plant",
    ...               {"speed": "ns=2;s=Pump1.speed"}, publishing_interval=200)
    >>> type(src).__name__, src.publishing_interval
    ('OpcUaSource', 200.0)
    >>> type(connect("mqtt://127.0.0.1", {"speed": "plant/pump1/telemetry#speed"})).__name__
    'MqttSource'
    >>> connect("http://127.0.0.1", {"speed": "x"})
    Traceback (most recent call last):
    ...
    ValueError: url: expected a URL starting with opc.tcp://, mqtt:// or mqtts://, got 'http://127.0.0.1'
    """
    if not isinstance(url, str):
        raise TypeError(f"url: expected a str, got {type(url).__name__}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "opc.tcp":
        from twinbench.io.opcua import opcua_source

        return opcua_source(url, tags, **options)
    if scheme in ("mqtt", "mqtts"):
        from twinbench.io.mqtt import mqtt_source

        return mqtt_source(url, tags, **options)
    shown = url if "@" not in url else url.split("://", 1)[0] + "://…"  # never echo credentials
    raise ValueError(f"url: expected a URL starting with "
                     f"{', '.join(s + '://' for s in list(SCHEMES)[:-1])} or "
                     f"{list(SCHEMES)[-1]}://, got {shown!r}")
