"""Payload decoding: every kind of bad input is counted by reason, marked, and never raises."""

from __future__ import annotations

import json
import logging
import math
from datetime import timedelta

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinbench.io.batch import Quality
from twinbench.io.decode import (
    Columns,
    Decoder,
    DecodeStats,
    JsonDecoder,
    NumericDecoder,
    RateLimitedLog,
    Reject,
    get_decoder,
    register_decoder,
)

GOOD, UNCERTAIN, BAD = Quality.GOOD, Quality.UNCERTAIN, Quality.BAD_DECODE
TOPIC = "plant/pump1/telemetry"
T0 = 1_700_000_000_000_000_000  # receive time used throughout, ns


def accounted(stats: DecodeStats) -> bool:
    return stats.messages == stats.accepted + sum(stats.rejects.values())


def only(stats: DecodeStats, reason: Reject, *, kind: str) -> None:
    """`reason` counted exactly once under `kind` and nothing else counted anywhere."""
    counters = stats.rejects if kind == "reject" else stats.flags
    other = stats.flags if kind == "reject" else stats.rejects
    assert counters[reason] == 1, stats
    assert sum(counters.values()) == 1, stats
    assert sum(other.values()) == 0, stats
    assert accounted(stats)


def temp_decoder(**options) -> JsonDecoder:
    return JsonDecoder({0: TOPIC + "#temperature"}, **options)


# -- accepted input ---------------------------------------------------------------------------


def test_nested_fields_and_list_indices_become_columns():
    dec = JsonDecoder({
        3: TOPIC + "#temperature",
        5: (TOPIC, "motor.currents[1]"),
        7: (TOPIC, "motor.currents[-1]"),
        9: (TOPIC, "bearings[0].vib.rms"),
        11: ("plant/pump2/telemetry", "speed"),
    })
    payload = orjson.dumps({
        "temperature": 61.5,
        "motor": {"currents": [3.0, 3.25, 3.5]},
        "bearings": [{"vib": {"rms": 0.125}}],
    })
    cols = dec.decode_many([(TOPIC, payload, T0), ("plant/pump2/telemetry", b'{"speed": 1450}',
                                                   T0 + 5)])
    assert isinstance(cols, Columns)
    assert cols.tag.dtype == np.int32 and cols.time.dtype == np.int64
    assert cols.value.dtype == np.float64 and cols.quality.dtype == np.uint8
    assert cols.tag.tolist() == [3, 5, 7, 9, 11]
    assert cols.value.tolist() == [61.5, 3.25, 3.5, 0.125, 1450.0]
    assert cols.time.tolist() == [T0, T0, T0, T0, T0 + 5]  # receive time: no time field
    assert cols.quality.tolist() == [GOOD] * 5
    assert dec.stats.messages == 2 and dec.stats.accepted == 2 and dec.stats.values == 5
    assert sum(dec.stats.rejects.values()) == 0 and sum(dec.stats.flags.values()) == 0


def test_empty_batch_gives_empty_typed_columns():
    cols = temp_decoder().decode_many([])
    assert len(cols) == 0
    assert [c.dtype for c in cols] == [np.int32, np.int64, np.float64, np.uint8]


def test_numeric_decoder_plain_payloads():
    dec = NumericDecoder({2: "a/speed", 4: "a/temp"})
    cols = dec.decode_many([("a/speed", b"1450.5", 10), ("a/temp", b" 61\n", 20),
                            ("a/speed", b"NaN", 30), ("a/speed", b"", 40), ("b/x", b"1", 50)])
    assert cols.tag.tolist() == [2, 4, 2]
    assert cols.time.tolist() == [10, 20, 30]
    assert cols.value[:2].tolist() == [1450.5, 61.0] and math.isnan(cols.value[2])
    assert cols.quality.tolist() == [GOOD, GOOD, BAD]
    st_ = dec.stats
    assert st_.flags[Reject.NON_FINITE] == 1
    assert st_.rejects[Reject.NOT_NUMBER] == 1 and st_.rejects[Reject.UNKNOWN_TOPIC] == 1
    assert st_.messages == 5 and st_.accepted == 3 and accounted(st_)


# -- each reason, exactly counted -------------------------------------------------------------


@pytest.mark.parametrize(("payload", "reason"), [
    (b"hello", Reject.NOT_JSON),
    (b"", Reject.NOT_JSON),
    (b'{"temperature": 1}}', Reject.NOT_JSON),
    (b"\xff\xfe{}", Reject.NOT_JSON),
    (b'{"temperature": 61.5', Reject.TRUNCATED),
    (b'{"temperature": ', Reject.TRUNCATED),
    (b'{"temperature": [1, 2', Reject.TRUNCATED),
    (b'{"temperature": 61.5, "note": "caf', Reject.TRUNCATED),
    (b'{"note": "caf\xc3', Reject.TRUNCATED),  # a UTF-8 sequence cut short
    (b'{"pressure": 2.0}', Reject.MISSING_FIELD),
    (b'[61.5]', Reject.MISSING_FIELD),
])
def test_message_rejects(payload, reason):
    dec = temp_decoder()
    cols = dec.decode(TOPIC, payload, T0)
    assert len(cols) == 0
    only(dec.stats, reason, kind="reject")
    assert dec.stats.accepted == 0


@pytest.mark.parametrize(("payload", "reason", "value", "quality"), [
    (b'{"temperature": "61.5"}', Reject.NUMBER_AS_STRING, 61.5, UNCERTAIN),
    (b'{"temperature": NaN}', Reject.NON_FINITE, math.nan, BAD),
    (b'{"temperature": -Infinity}', Reject.NON_FINITE, math.nan, BAD),
    (b'{"temperature": 1e999}', Reject.NON_FINITE, math.nan, BAD),
    (b'{"temperature": 1' + b"0" * 400 + b"}", Reject.NON_FINITE, math.nan, BAD),
    (b'{"temperature": true}', Reject.WRONG_TYPE, math.nan, BAD),
    (b'{"temperature": null}', Reject.WRONG_TYPE, math.nan, BAD),
    (b'{"temperature": [61.5]}', Reject.WRONG_TYPE, math.nan, BAD),
    (b'{"temperature": {"v": 61.5}}', Reject.WRONG_TYPE, math.nan, BAD),
    (b'{"temperature": "hot"}', Reject.WRONG_TYPE, math.nan, BAD),
])
def test_value_flags_keep_a_marked_sample(payload, reason, value, quality):
    dec = temp_decoder()
    cols = dec.decode(TOPIC, payload, T0)
    assert cols.tag.tolist() == [0] and cols.time.tolist() == [T0]
    assert cols.quality.tolist() == [quality]
    if math.isnan(value):
        assert math.isnan(cols.value[0])
    else:
        assert cols.value.tolist() == [value]
    only(dec.stats, reason, kind="flag")
    assert dec.stats.accepted == 1 and dec.stats.values == 1


def test_numbers_as_strings_rejected_by_policy():
    dec = temp_decoder(strings_as_numbers="reject")
    cols = dec.decode(TOPIC, b'{"temperature": "61.5"}', T0)
    assert math.isnan(cols.value[0]) and cols.quality.tolist() == [BAD]
    only(dec.stats, Reject.NUMBER_AS_STRING, kind="flag")


def test_string_nan_counts_as_string_and_non_finite():
    dec = temp_decoder()
    cols = dec.decode(TOPIC, b'{"temperature": "NaN"}', T0)
    assert math.isnan(cols.value[0]) and cols.quality.tolist() == [BAD]
    assert dec.stats.flags[Reject.NUMBER_AS_STRING] == 1
    assert dec.stats.flags[Reject.NON_FINITE] == 1


def test_missing_one_of_two_fields_keeps_the_other():
    dec = JsonDecoder({0: TOPIC + "#a", 1: TOPIC + "#b.c"})
    cols = dec.decode(TOPIC, b'{"a": 1.5, "b": {}}', T0)
    assert cols.tag.tolist() == [0] and cols.value.tolist() == [1.5]
    only(dec.stats, Reject.MISSING_FIELD, kind="flag")


def test_unknown_topic_rejected():
    dec = temp_decoder()
    assert len(dec.decode("plant/other", b'{"temperature": 1}', T0)) == 0
    only(dec.stats, Reject.UNKNOWN_TOPIC, kind="reject")


def test_oversized_is_checked_before_parsing(monkeypatch):
    import twinbench.io.decode as decode_module

    def refuse(payload):
        raise AssertionError("an oversized payload must not be parsed")

    monkeypatch.setattr(decode_module, "_fast_loads", refuse)
    dec = temp_decoder(max_payload_bytes=32)
    payload = b'{"temperature": 1.0, "pad": "' + b"x" * 40 + b'"}'
    assert len(dec.decode(TOPIC, payload, T0)) == 0
    only(dec.stats, Reject.OVERSIZED, kind="reject")
    num = NumericDecoder({0: "a"}, max_payload_bytes=4)
    assert len(num.decode("a", b"12345", T0)) == 0 and len(num.decode("a", b"1234", T0)) == 1
    assert num.stats.rejects[Reject.OVERSIZED] == 1


def test_default_size_limit_is_64_kib():
    dec = temp_decoder()
    body = b'{"temperature": 1.0, "pad": "'
    fits = body + b"x" * (65536 - len(body) - 2) + b'"}'
    assert len(fits) == 65536
    assert len(dec.decode(TOPIC, fits, T0)) == 1
    assert len(dec.decode(TOPIC, fits[:-2] + b'x"}', T0)) == 0
    assert dec.stats.rejects[Reject.OVERSIZED] == 1


# -- timestamps -------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "raw", "expected_ns"), [
    ("epoch_s", 1_700_000_000, 1_700_000_000 * 10**9),
    ("epoch_s", 1_700_000_000.5, 1_700_000_000_500_000_000),
    ("epoch_ms", 1_700_000_000_123, 1_700_000_000_123_000_000),
    ("epoch_us", 1_700_000_000_123_456, 1_700_000_000_123_456_000),
    ("epoch_ns", 1_700_000_000_123_456_789, 1_700_000_000_123_456_789),
    ("iso8601", "2023-11-14T22:13:20Z", 1_700_000_000 * 10**9),
    ("iso8601", "2023-11-14T22:13:20.25+00:00", 1_700_000_000_250_000_000),
    ("iso8601", "2023-11-15T00:13:20+02:00", 1_700_000_000 * 10**9),
    ("iso8601", "2023-11-14T17:13:20.000001-05:00", 1_700_000_000_000_001_000),
    ("iso8601", "2023-11-14T22:13:20", 1_700_000_000 * 10**9),  # no offset: UTC
])
def test_equipment_timestamps_to_utc_ns(fmt, raw, expected_ns):
    dec = temp_decoder(time_field="meta.ts", time_format=fmt)
    payload = orjson.dumps({"meta": {"ts": raw}, "temperature": 1.0})
    cols = dec.decode(TOPIC, payload, expected_ns + 10**9)
    assert cols.time.tolist() == [expected_ns]
    assert cols.quality.tolist() == [GOOD]
    assert sum(dec.stats.flags.values()) == 0


@pytest.mark.parametrize(("fmt", "raw"), [
    ("iso8601", "yesterday"),
    ("iso8601", 1_700_000_000),
    ("epoch_s", "1700000000"),
    ("epoch_s", True),
    ("epoch_s", 10**12),  # beyond datetime64[ns]
    ("epoch_ns", 1e300),  # finite, but not once scaled
    ("epoch_s", 1e300),
    ("epoch_ms", 10**30),
    ("epoch_ms", None),
])
def test_bad_timestamp_falls_back_to_receive_time(fmt, raw):
    dec = temp_decoder(time_field="ts", time_format=fmt)
    payload = json.dumps({"ts": raw, "temperature": 2.0}).encode()  # orjson refuses 10**30
    cols = dec.decode(TOPIC, payload, T0)
    assert cols.time.tolist() == [T0] and cols.value.tolist() == [2.0]
    assert cols.quality.tolist() == [UNCERTAIN]
    only(dec.stats, Reject.BAD_TIMESTAMP, kind="flag")


def test_future_timestamp_beyond_skew():
    dec = temp_decoder(time_field="ts", time_format="epoch_ns",
                       max_clock_skew=timedelta(minutes=5))
    skew = 5 * 60 * 10**9
    ok = dec.decode(TOPIC, orjson.dumps({"ts": T0 + skew, "temperature": 1.0}), T0)
    assert ok.time.tolist() == [T0 + skew] and ok.quality.tolist() == [GOOD]
    late = dec.decode(TOPIC, orjson.dumps({"ts": T0 + skew + 1, "temperature": 1.0}), T0)
    assert late.time.tolist() == [T0] and late.quality.tolist() == [UNCERTAIN]
    assert dec.stats.flags[Reject.FUTURE_TIMESTAMP] == 1
    assert dec.stats.accepted == 2 and accounted(dec.stats)


def test_missing_time_field_uses_receive_time_marked():
    dec = temp_decoder(time_field="ts")
    cols = dec.decode(TOPIC, b'{"temperature": 3.0}', T0)
    assert cols.time.tolist() == [T0] and cols.quality.tolist() == [UNCERTAIN]
    only(dec.stats, Reject.MISSING_FIELD, kind="flag")


def test_bad_value_stays_bad_with_bad_timestamp():
    dec = temp_decoder(time_field="ts", time_format="epoch_s")
    cols = dec.decode(TOPIC, b'{"ts": "x", "temperature": null}', T0)
    assert cols.quality.tolist() == [BAD]


# -- sequence numbers -------------------------------------------------------------------------


def test_sequence_duplicates_and_out_of_order_per_topic():
    other = "plant/pump2/telemetry"
    dec = JsonDecoder({0: TOPIC + "#v", 1: other + "#v"}, sequence_field="seq")

    def msg(topic, seq, v):
        return topic, orjson.dumps({"seq": seq, "v": v}), T0

    cols = dec.decode_many([
        msg(TOPIC, 1, 1.0), msg(TOPIC, 2, 2.0),
        msg(other, 1, 10.0),  # the same number on another topic is not a duplicate
        msg(TOPIC, 2, 2.0),   # redelivery: dropped
        msg(TOPIC, 5, 5.0), msg(TOPIC, 4, 4.0),  # late: kept, counted
        msg(TOPIC, 4, 4.0),   # the late one again: a duplicate
    ])
    assert cols.tag.tolist() == [0, 0, 1, 0, 0]
    assert cols.value.tolist() == [1.0, 2.0, 10.0, 5.0, 4.0]
    assert cols.quality.tolist() == [GOOD] * 5
    assert dec.stats.rejects[Reject.DUPLICATE_SEQUENCE] == 2
    assert dec.stats.flags[Reject.OUT_OF_ORDER_SEQUENCE] == 1
    assert dec.stats.messages == 7 and dec.stats.accepted == 5 and accounted(dec.stats)


def test_sequence_restart_far_behind_is_tracked_afresh():
    dec = temp_decoder(sequence_field="seq", sequence_window=4)
    payloads = [orjson.dumps({"seq": s, "temperature": 1.0}) for s in (100, 101, 1, 2, 2)]
    cols = dec.decode_many([(TOPIC, p, T0) for p in payloads])
    assert len(cols) == 4
    assert dec.stats.flags[Reject.OUT_OF_ORDER_SEQUENCE] == 1  # the restart at 1
    assert dec.stats.rejects[Reject.DUPLICATE_SEQUENCE] == 1


def test_sequence_field_missing_or_wrong_type_keeps_data():
    dec = temp_decoder(sequence_field="seq")
    cols = dec.decode_many([(TOPIC, b'{"temperature": 1}', T0),
                            (TOPIC, b'{"seq": "7", "temperature": 1}', T0)])
    assert len(cols) == 2
    assert dec.stats.flags[Reject.MISSING_FIELD] == 1
    assert dec.stats.flags[Reject.WRONG_TYPE] == 1


# -- stats, logging, registry, validation -----------------------------------------------------


def test_stats_as_dict_lists_every_reason():
    dec = temp_decoder()
    dec.decode_many([(TOPIC, b"x", T0), (TOPIC, b'{"temperature": "1"}', T0)])
    shown = dec.stats.as_dict()
    assert shown["messages"] == 2 and shown["accepted"] == 1 and shown["rejected"] == 1
    assert shown["values"] == 1
    assert set(shown["rejects"]) == {r.value for r in Reject} == set(shown["flags"])
    assert shown["rejects"]["not_json"] == 1 and shown["flags"]["number_as_string"] == 1
    assert dec.stats.count(Reject.NOT_JSON) == 1
    orjson.dumps(shown)  # plain data, ready for a status panel
    dec.stats.reset()
    assert dec.stats.messages == 0 and dec.stats.rejected == 0


def test_rate_limited_logging_with_injected_clock(caplog):
    now = [1000.0]
    log = RateLimitedLog(interval_s=10.0, clock=lambda: now[0])
    dec = temp_decoder(log=log)
    caplog.set_level(logging.WARNING, logger="twinbench.io.decode")
    for _ in range(5):
        dec.decode(TOPIC, b"garbage", T0)
    dec.decode(TOPIC, b'{"temperature": 1', T0)  # another reason logs on its own
    records = [r for r in caplog.records if r.name == "twinbench.io.decode"]
    assert len(records) == 2
    assert all(r.levelno == logging.WARNING for r in records)
    assert "not_json" in records[0].getMessage() and "truncated" in records[1].getMessage()
    assert log.suppressed(Reject.NOT_JSON) == 4

    now[0] += 9.9
    dec.decode(TOPIC, b"garbage", T0)
    assert len([r for r in caplog.records if r.name == "twinbench.io.decode"]) == 2
    now[0] += 0.2
    dec.decode(TOPIC, b"garbage", T0)
    records = [r for r in caplog.records if r.name == "twinbench.io.decode"]
    assert len(records) == 3
    assert "(and 5 more" in records[-1].getMessage()
    assert log.suppressed(Reject.NOT_JSON) == 0
    assert dec.stats.rejects[Reject.NOT_JSON] == 7  # logging is limited, counting is not


def test_registry():
    assert get_decoder("json") is JsonDecoder
    assert get_decoder("numeric") is NumericDecoder

    @register_decoder("test-upper")
    class Upper:
        pass

    assert get_decoder("test-upper") is Upper
    assert register_decoder("test-upper")(Upper) is Upper  # re-registering the same is fine
    with pytest.raises(ValueError, match="already registered"):
        register_decoder("test-upper")(type("Other", (), {}))
    with pytest.raises(ValueError, match="registered decoder"):
        get_decoder("no-such-decoder")
    assert isinstance(temp_decoder(), Decoder) and isinstance(NumericDecoder({0: "a"}), Decoder)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"fields": {}}, "fields"),
    ({"fields": {0: "no-hash"}}, r"fields\[0\]"),
    ({"fields": {-1: "t#a"}}, "tag index"),
    ({"fields": {0: "t#a..b"}}, r"fields\[0\]"),
    ({"fields": {0: "t#"}}, r"fields\[0\]"),
    ({"fields": {0: "t#a"}, "time_format": "epoch_min"}, "time_format"),
    ({"fields": {0: "t#a"}, "strings_as_numbers": "maybe"}, "strings_as_numbers"),
    ({"fields": {0: "t#a"}, "max_payload_bytes": 0}, "max_payload_bytes"),
    ({"fields": {0: "t#a"}, "max_clock_skew": -1}, "max_clock_skew"),
    ({"fields": {0: "t#a"}, "sequence_window": 0}, "sequence_window"),
])
def test_json_decoder_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JsonDecoder(**kwargs)


def test_numeric_decoder_validates():
    with pytest.raises(ValueError, match="topics"):
        NumericDecoder({0: "a", 1: "a"})
    with pytest.raises(ValueError, match="tag index"):
        NumericDecoder({True: "a"})


# -- fuzz: nothing escapes, nothing is dropped uncounted --------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8) | st.sampled_from(["61.5", "NaN", "-1e3", " 2 "])
    | st.sampled_from([1e300, -1e300, 10**40, 1_700_000_000_000, "2023-11-14T22:13:20+14:00",
                       "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-12:00"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["temperature", "motor", "i", "ts", "seq", "x"]),
                      children, max_size=5),
    max_leaves=20,
)


def fuzz_decoders():
    return [
        JsonDecoder({0: TOPIC + "#temperature", 1: TOPIC + "#motor.i[0]", 2: TOPIC + "#x[-1].i"},
                    time_field="ts", time_format="epoch_ms", sequence_field="seq",
                    max_payload_bytes=256),
        JsonDecoder({0: TOPIC + "#x", 1: TOPIC + "#seq"}, time_field="i", time_format="epoch_s",
                    sequence_field="temperature", sequence_window=2),
        JsonDecoder({0: TOPIC + "#temperature"}, time_field="ts", time_format="iso8601",
                    strings_as_numbers="reject"),
        NumericDecoder({0: TOPIC}, max_payload_bytes=64),
    ]


def check_accounting(dec, messages, cols):
    stats = dec.stats
    assert stats.messages == len(messages)
    assert stats.messages == stats.accepted + sum(stats.rejects.values())
    assert stats.values == len(cols)
    assert len({len(c) for c in cols}) == 1
    assert [c.dtype for c in cols] == [np.int32, np.int64, np.float64, np.uint8]
    assert set(np.unique(cols.quality).tolist()) <= {GOOD, UNCERTAIN, BAD}
    # a non-finite value is never handed on: it is NaN and BAD
    assert np.all(np.isnan(cols.value) | np.isfinite(cols.value))
    assert np.all(cols.quality[np.isnan(cols.value)] == BAD)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from([TOPIC, "other/topic"]), st.binary(max_size=300)),
                max_size=8))
def test_fuzz_random_bytes(raw):
    messages = [(topic, payload, T0 + i) for i, (topic, payload) in enumerate(raw)]
    for dec in fuzz_decoders():
        check_accounting(dec, messages, dec.decode_many(messages))


@settings(max_examples=300)
@given(st.lists(st.tuples(json_values, st.sampled_from(["plain", "cut", "nan"]),
                          st.integers(0, 50)), max_size=8))
def test_fuzz_json_like_structures(docs):
    messages = []
    for i, (doc, mangle, cut) in enumerate(docs):
        text = json.dumps(doc, allow_nan=True).encode()  # NaN/Infinity tokens included
        if mangle == "cut":
            text = text[: max(len(text) - cut, 0)]
        elif mangle == "nan":
            text = text.replace(b"0", b"NaN")
        messages.append((TOPIC, text, T0 + i))
    for dec in fuzz_decoders():
        check_accounting(dec, messages, dec.decode_many(messages))
