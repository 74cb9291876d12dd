"""Random OPC-UA notifications through the wire encoding into columns: never a crash, every
value accounted for (hypothesis)."""

from __future__ import annotations

import datetime as dt
import math
import time

import numpy as np
from asyncua import ua
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary
from hypothesis import given, settings
from hypothesis import strategies as st

from twinbench.io.batch import Quality
from twinbench.io.decode import DecodeStats
from twinbench.io.opcua import item_columns

N_TAGS = 4
UTC = dt.UTC

VARIANTS = st.one_of(
    st.builds(lambda v: ua.Variant(v, ua.VariantType.Double), st.floats(allow_nan=True)),
    st.builds(lambda v: ua.Variant(v, ua.VariantType.Float),
              st.floats(width=32, allow_nan=True)),
    st.builds(lambda v: ua.Variant(v, ua.VariantType.Int64),
              st.integers(-2**63, 2**63 - 1)),
    st.builds(lambda v: ua.Variant(v, ua.VariantType.UInt32), st.integers(0, 2**32 - 1)),
    st.builds(lambda v: ua.Variant(v, ua.VariantType.Boolean), st.booleans()),
    st.builds(lambda v: ua.Variant(v, ua.VariantType.String), st.text(max_size=20)),
    st.builds(lambda v: ua.Variant(v, ua.VariantType.ByteString), st.binary(max_size=20)),
    st.builds(lambda v: ua.Variant(v, ua.VariantType.Double),
              st.lists(st.floats(allow_nan=False), max_size=4)),
    st.builds(lambda v: ua.Variant(v, ua.VariantType.DateTime),
              st.datetimes(min_value=dt.datetime(1601, 1, 2), timezones=st.just(UTC))),
    st.just(ua.Variant()),
)
TIMESTAMPS = st.one_of(
    st.none(),
    st.datetimes(min_value=dt.datetime(1601, 1, 1), max_value=dt.datetime(9999, 12, 31),
                 timezones=st.just(UTC)),
)
ITEMS = st.lists(st.tuples(st.integers(0, N_TAGS + 2), VARIANTS, st.integers(0, 2**32 - 1),
                           TIMESTAMPS, TIMESTAMPS), max_size=30)


def wire(handle: int, variant: ua.Variant, status: int, source: dt.datetime | None,
         server: dt.datetime | None) -> ua.MonitoredItemNotification:
    """A notification as the client receives it: encoded and decoded by asyncua's codec."""
    item = ua.MonitoredItemNotification(
        ClientHandle=handle,
        Value=ua.DataValue(variant, StatusCode=ua.StatusCode(status), SourceTimestamp=source,
                           ServerTimestamp=server))
    return struct_from_binary(ua.MonitoredItemNotification,
                              ua.utils.Buffer(struct_to_binary(item)))


@settings(max_examples=300)
@given(ITEMS, st.sampled_from(["source", "server", "receive"]))
def test_random_notifications_become_columns_without_crashing(items, timestamps):
    notifications = [wire(*item) for item in items]
    stats = DecodeStats()
    receive_ns = time.time_ns()
    tag, t, value, quality = item_columns(notifications, N_TAGS, receive_ns, timestamps,
                                          3600.0, stats)

    valid = [n for n in notifications if 1 <= n.ClientHandle <= N_TAGS]
    assert len(tag) == len(t) == len(value) == len(quality) == len(valid)
    # every notification is accounted for: a sample, or a rejected unknown handle
    assert stats.messages == len(notifications)
    assert stats.values + stats.rejected == stats.messages
    assert tag.dtype == np.int32 and t.dtype == np.int64 and value.dtype == np.float64
    assert ((tag >= 0) & (tag < N_TAGS)).all()
    # times are sane: never more than the allowed skew ahead, never before 1678 (datetime64[ns])
    assert (t <= receive_ns + 3600 * 10**9 + 1000).all()
    assert (t >= -9_200_000_000 * 10**9).all()
    for n, v, q in zip(valid, value, quality):
        raw = n.Value.Value.Value
        severity = n.Value.StatusCode.value >> 30
        if isinstance(raw, bool) or (isinstance(raw, (int, float)) and math.isfinite(raw)):
            assert v == float(raw)
            assert q >= (Quality.BAD if severity >= 2 else severity)
        else:
            assert math.isnan(v)
            assert q == Quality.BAD_DECODE or (raw is None and q >= Quality.BAD)
    problems = sum(stats.flags.values())
    assert problems <= 2 * len(valid)
