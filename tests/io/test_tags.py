"""Tag maps: address parsing, the mapping API, and YAML/JSON files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from twinbench.io.batch import Batch
from twinbench.io.tags import (
    MqttAddress,
    OpcUaAddress,
    TagMap,
    parse_address,
    tag_map,
    topic_filter,
    topic_matches,
)

GUID = "72962B91-FA75-4AE6-8D28-B404DC7DAF63"


@pytest.mark.parametrize("text, namespace, kind, identifier, canonical", [
    ("ns=2;s=Pump1.Speed", 2, "s", "Pump1.Speed", "ns=2;s=Pump1.Speed"),
    ("i=2258", 0, "i", 2258, "i=2258"),
    ("ns=0;i=85", 0, "i", 85, "i=85"),
    ("ns=65535;i=4294967295", 65535, "i", 4294967295, "ns=65535;i=4294967295"),
    (f"ns=1;g={GUID}", 1, "g", GUID.lower(), f"ns=1;g={GUID.lower()}"),
    ("ns=3;b=M/RbKBsRVkePCePcx24oRA==", 3, "b", "M/RbKBsRVkePCePcx24oRA==",
     "ns=3;b=M/RbKBsRVkePCePcx24oRA=="),
    ("ns=2;s=a;b=c", 2, "s", "a;b=c", "ns=2;s=a;b=c"),  # everything after s= is the identifier
])
def test_valid_node_ids(text, namespace, kind, identifier, canonical):
    address = parse_address(text, "opc.tcp")
    assert (address.namespace, address.kind, address.identifier) == (namespace, kind, identifier)
    assert address.browse_path is None
    assert str(address) == address.node_id == canonical
    assert parse_address(canonical) == address  # the canonical text reads back the same


@pytest.mark.parametrize("text, match", [
    ("ns=x;i=5", "namespace index"),
    ("ns=70000;i=5", "namespace index"),
    ("ns=-1;i=5", "namespace index"),
    ("i=abc", "numeric identifier"),
    ("i=4294967296", "numeric identifier"),
    ("ns=2;s=", "must not be empty"),
    ("ns=1;g=not-a-guid", "GUID"),
    ("ns=1;b=***", "base64"),
    ("ns=1;b=", "base64"),
    ("ns=2;x=5", "not an OPC-UA NodeId"),
    ("Pump1.Speed", "not an OPC-UA NodeId"),
    ("0:Objects//2:Speed", "browse path step ''"),
    ("0:Objects/Plant", "browse path step 'Plant'"),
    ("0:Objects/99999:Plant", "browse path step"),
])
def test_invalid_opcua_addresses_name_the_tag(text, match):
    with pytest.raises(ValueError, match=match) as info:
        tag_map({"pump_speed": text}, scheme="opc.tcp")
    assert "tag 'pump_speed'" in str(info.value)


def test_browse_paths():
    address = parse_address("0:Objects/2:Plant/2:Pump1/2:Speed")
    assert isinstance(address, OpcUaAddress)
    assert address.browse_path == ((0, "Objects"), (2, "Plant"), (2, "Pump1"), (2, "Speed"))
    assert address.node_id is None
    assert str(address) == "0:Objects/2:Plant/2:Pump1/2:Speed"
    assert parse_address("2:Pump 1: main").browse_path == ((2, "Pump 1: main"),)


@pytest.mark.parametrize("text, topic, field", [
    ("plant/pump1/telemetry#temperature", "plant/pump1/telemetry", ("temperature",)),
    ("plant/pump1/telemetry#bearing.temps[0]", "plant/pump1/telemetry", ("bearing", "temps", 0)),
    ("plant/p#a[1][2].b", "plant/p", ("a", 1, 2, "b")),
    ("plant/p#[3].v", "plant/p", (3, "v")),
    ("plant/pump1/speed", "plant/pump1/speed", None),
    ("$SYS/broker/load", "$SYS/broker/load", None),
    ("/leading/slash", "/leading/slash", None),
])
def test_mqtt_addresses(text, topic, field):
    address = parse_address(text, "mqtt")
    assert isinstance(address, MqttAddress)
    assert (address.topic, address.field) == (topic, field)
    assert str(address) == text
    assert parse_address(str(address), "mqtt") == address


def test_nested_field_paths_reach_into_payloads():
    payload = {"bearing": {"temps": [40.5, 41.5]}, "rows": [[1, 2], [3, 4]], "speed": 1450}
    assert parse_address("t#bearing.temps[1]", "mqtt").get(payload) == 41.5
    assert parse_address("t#rows[1][0]", "mqtt").get(payload) == 3
    assert parse_address("t", "mqtt").get(7.5) == 7.5
    assert parse_address("t#[1]", "mqtt").get([5, 6]) == 6
    with pytest.raises(KeyError):
        parse_address("t#bearing.speed", "mqtt").get(payload)
    with pytest.raises(IndexError):
        parse_address("t#bearing.temps[5]", "mqtt").get(payload)
    with pytest.raises(TypeError, match="list"):
        parse_address("t#speed[0]", "mqtt").get(payload)
    with pytest.raises(TypeError, match="object"):
        parse_address("t#speed.x", "mqtt").get(payload)


@pytest.mark.parametrize("text, match", [
    ("plant/+/telemetry#temperature", "wildcard"),
    ("plant/#", "empty JSON field path"),  # '#' starts the field path, which is then empty
    ("plant/pump1/telemetry#", "empty JSON field path"),
    ("plant/p#a..b", "bad JSON field path"),
    ("plant/p#a[x]", "bad JSON field path"),
    ("plant/p#a.[0]", "bad JSON field path"),
    ("plant/p#a]", "bad JSON field path"),
    ("#temperature", "must not be empty"),
    ("plant/\x00", "NUL"),
])
def test_invalid_mqtt_addresses_name_the_tag(text, match):
    with pytest.raises(ValueError, match=match) as info:
        tag_map({"bearing_temp": text}, scheme="mqtt")
    assert "tag 'bearing_temp'" in str(info.value)


def test_topic_filters_allow_wildcards_by_the_rules():
    assert topic_filter("plant/+/telemetry") == "plant/+/telemetry"
    assert topic_filter("#") == "#"
    for bad in ("plant/pu+", "plant/#/x", "plant/a#", ""):
        with pytest.raises(ValueError):
            topic_filter(bad)
    assert topic_matches("plant/+/telemetry", "plant/pump1/telemetry")
    assert not topic_matches("plant/+/telemetry", "plant/pump1/speed")
    assert topic_matches("plant/#", "plant/pump1/telemetry")
    assert topic_matches("plant/#", "plant")
    assert not topic_matches("plant/+", "plant/a/b")
    assert not topic_matches("#", "$SYS/broker/load")
    assert topic_matches("$SYS/#", "$SYS/broker/load")


def test_scheme_inference_and_aliases():
    assert isinstance(parse_address("ns=2;s=X"), OpcUaAddress)
    assert isinstance(parse_address("s=X"), OpcUaAddress)
    assert isinstance(parse_address("2:Plant/2:Pump"), OpcUaAddress)
    assert isinstance(parse_address("plant/pump1#speed"), MqttAddress)
    assert isinstance(parse_address("i=5", "mqtts"), MqttAddress)  # the scheme decides
    assert isinstance(parse_address("i=5", "opc.tcp://localhost:4840"), OpcUaAddress)
    with pytest.raises(ValueError, match="scheme"):
        parse_address("x", "http")
    with pytest.raises(TypeError, match="text"):
        parse_address(5)


def test_tag_map_api():
    tm = tag_map({"speed": "ns=2;s=Pump1.Speed",
                  "temp": {"address": "ns=2;s=Pump1.Temp", "units": "degC",
                           "long_name": "bearing temperature"}})
    assert isinstance(tm, TagMap)
    assert tm.names == ("speed", "temp") and list(tm) == ["speed", "temp"] and len(tm) == 2
    assert tm.index("temp") == 1 and "temp" in tm and "nope" not in tm
    assert tm.scheme == "opc.tcp"
    assert tm.units == {"temp": "degC"} and tm.long_names == {"temp": "bearing temperature"}
    assert tm["speed"] == OpcUaAddress(namespace=2, kind="s", identifier="Pump1.Speed")
    with pytest.raises(KeyError, match="nope"):
        tm.index("nope")
    assert tag_map(tm) is tm
    with pytest.raises(ValueError, match="scheme"):
        tag_map(tm, scheme="mqtt")


def test_tag_map_feeds_batches_and_datasets():
    tm = tag_map({"speed": {"address": "plant/p1#speed", "units": "rpm"}, "temp": "plant/p1#temp"})
    b = Batch([tm.index("temp"), tm.index("speed")], ["2026-01-01"] * 2, [40.0, 1450.0],
              tags=tm.names)
    ds = b.to_dataset(units=tm.units, long_names=tm.long_names)
    assert ds["speed"].attrs["units"] == "rpm"
    np.testing.assert_array_equal(ds["temp"].values, [40.0])


def test_mixed_schemes_are_refused():
    with pytest.raises(ValueError, match="one scheme"):
        tag_map({"a": "ns=2;s=A", "b": "plant/b#v"})


@pytest.mark.parametrize("tags, error, match", [
    ({"speed": {"address": "ns=2;s=A", "unit": "rpm"}}, ValueError, r"tag 'speed': unknown keys \['unit'\]"),
    ({"speed": {"units": "rpm"}}, ValueError, "tag 'speed': missing 'address'"),
    ({"speed": {"address": "ns=2;s=A", "units": 5}}, TypeError, "tag 'speed': 'units'"),
    ({"speed": 5}, TypeError, "tag 'speed'"),
    ({"": "ns=2;s=A"}, ValueError, "tag ''"),
    ({" speed": "ns=2;s=A"}, ValueError, "tag ' speed'"),
    ([{"name": "a", "address": "ns=2;s=A"}, {"name": "a", "address": "ns=2;s=B"}],
     ValueError, "tag 'a': duplicate"),
    ([{"address": "ns=2;s=A"}], ValueError, "entry 0"),
    ({"scheme": "mqtt", "tags": {"a": "x/y"}, "version": 2}, ValueError, "top-level keys"),
    (42, TypeError, "tags"),
])
def test_bad_entries_are_refused(tags, error, match):
    with pytest.raises(error, match=match):
        tag_map(tags)


def test_a_tag_named_tags_is_an_entry_not_the_wrapper():
    tm = tag_map({"tags": {"address": "plant/tags#v"}})
    assert tm.names == ("tags",)


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_files_round_trip(tmp_path, suffix):
    tm = tag_map({"speed": {"address": "plant/pump1/telemetry#speed", "units": "rpm"},
                  "temp": {"address": "plant/pump1/telemetry#bearing.temps[0]",
                           "long_name": "Lagertemperatur °C"},
                  "power": "plant/pump1/power"})
    path = tm.save(tmp_path / f"tags{suffix}")
    back = tag_map(path)
    assert back == tm
    assert back.names == tm.names and back.units == tm.units and back.long_names == tm.long_names
    assert back.scheme == "mqtt"
    assert tag_map(str(path)) == tm


def test_opcua_file_round_trip_keeps_the_scheme(tmp_path):
    # "i=5" alone reads as OPC-UA, but the saved scheme keeps an MQTT topic named "i=5" MQTT.
    tm = tag_map({"odd": "i=5"}, scheme="mqtt")
    assert tag_map(tm.save(tmp_path / "odd.json")) == tm
    tm = tag_map({"a": "ns=2;s=A", "b": f"ns=1;g={GUID}", "c": "0:Objects/2:Plant/2:C"})
    assert tag_map(tm.save(tmp_path / "opc.yaml")) == tm


def test_handwritten_yaml_and_json_files(tmp_path):
    yaml_file = tmp_path / "pump.yaml"
    yaml_file.write_text(
        "# pump tags\n"
        "speed: ns=2;s=Pump1.Speed\n"
        "temp:\n"
        "  address: 0:Objects/2:Plant/2:Pump1/2:Temp\n"
        "  units: degC\n", encoding="utf-8")
    tm = tag_map(yaml_file)
    assert tm.names == ("speed", "temp") and tm.units == {"temp": "degC"}
    json_file = tmp_path / "pump.json"
    json_file.write_text(json.dumps([{"name": "speed", "address": "plant/p1#speed"}]))
    assert tag_map(json_file)["speed"] == MqttAddress("plant/p1", ("speed",))


@pytest.mark.parametrize("name, text, match", [
    ("dup.yaml", "speed: ns=2;s=A\nspeed: ns=2;s=B\n", "duplicate key 'speed'"),
    ("dup.json", '{"speed": "ns=2;s=A", "speed": "ns=2;s=B"}', "duplicate key 'speed'"),
    ("bad.yaml", "speed: [unclosed\n", "not valid YAML"),
    ("bad.json", "{", "Expecting"),
    ("unknown.yaml", "speed:\n  address: ns=2;s=A\n  unitz: rpm\n", "tag 'speed': unknown keys"),
    ("badid.json", '{"speed": "ns=2;i=x"}', "tag 'speed': 'ns=2;i=x'"),
    ("tags.txt", "speed: ns=2;s=A\n", r"\.yaml, \.yml or \.json"),
])
def test_file_errors_name_the_file_and_tag(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=match) as info:
        tag_map(path)
    assert str(path) in str(info.value)


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(OSError, match="absent.yaml"):
        tag_map(path)


def test_save_refuses_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="path"):
        tag_map({"a": "x/y"}).save(tmp_path / "tags.toml")


def test_importing_tags_stays_light():
    import subprocess
    import sys

    code = ("import sys, twinbench.io.tags, twinbench.io.batch\n"
            "print(sorted({'yaml', 'xarray', 'pandas'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_direct_construction_is_validated_and_normalised():
    assert OpcUaAddress(namespace=1, kind="g", identifier=GUID) == parse_address(f"ns=1;g={GUID}")
    assert OpcUaAddress(kind="i", identifier=5).namespace == 0
    assert OpcUaAddress(browse_path=((0, "Objects"),)) == parse_address("0:Objects")
    for kwargs in ({}, {"kind": "i", "identifier": -1}, {"kind": "x", "identifier": 1},
                   {"kind": "s", "identifier": ""}, {"browse_path": ((0, "a/b"),)},
                   {"browse_path": ()}, {"kind": "i", "identifier": 1, "browse_path": ((0, "a"),)}):
        with pytest.raises(ValueError):
            OpcUaAddress(**kwargs)
    assert MqttAddress("a/b", ("x", 0)) == parse_address("a/b#x[0]", "mqtt")
    with pytest.raises(ValueError, match="wildcard"):
        MqttAddress("plant/+/x")
    for field in (("a.b",), ("",), (-1,), (True,)):
        with pytest.raises(ValueError, match="field"):
            MqttAddress("a/b", field)
    with pytest.raises(TypeError, match="field"):
        MqttAddress("a/b", ())
    with pytest.raises(TypeError, match="topic"):
        MqttAddress(5)
