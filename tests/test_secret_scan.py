"""No secret in a notebook, a recording, a history store, a log line or an exception message.

Realistic flows run with distinctive test credentials against ``twinbench plant --secure``:
``twinbench trust`` and ``twinbench record`` (OPC-UA to NetCDF, MQTT over TLS to Zarr), a live
twin writing a Zarr history, an executed notebook that takes its credentials from environment
variables, and every refusal a wrong credential or an untrusted certificate causes. All log
output at DEBUG (pytest's capture and a log file, in this process and in the notebook's
kernel), the plant's stdout and stderr, every exception (str, repr, traceback and its chain)
and every file the test produced are then scanned for the secrets. The scanner proves first that
it finds a secret planted on purpose.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
import traceback
from collections.abc import Iterable
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("asyncua")

import twinbench as tb
from twinbench.cli import main as cli
from twinbench.io.mqtt import mqtt_source
from twinbench.io.opcua import UntrustedCertificate, opcua_source
from twinbench.plant import PlantProcess
from twinbench.plant._broker import find_mosquitto
from twinbench.twin import Twin

USER = "operator"
SECRET = "Tb-secret-7f3a9c"  # the account's password, MQTT and OPC-UA
WRONG = "Tb-wrong-secret-2b8d"  # a wrong password someone typed: just as secret
SECRETS = (SECRET, WRONG)
SPEED_NODE = "ns=2;s=Pump1.speed"
SPEED_TOPIC = "plant/pump1/telemetry#speed"


# -- the scanner ------------------------------------------------------------------------------

def needles(secret: str) -> dict[str, bytes]:
    """The byte patterns of `secret` worth looking for: UTF-8, UTF-16 and, at each of the three
    byte alignments, the base64 characters that depend on the secret alone."""
    raw = secret.encode()
    found = {"utf-8": raw, "utf-16-le": secret.encode("utf-16-le")}
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        first = 1 if shift else 0  # the first group mixes in what came before
        last = (shift + len(raw)) // 3  # a last partial group mixes in what comes after
        found[f"base64+{shift}"] = encoded[4 * first:4 * last]
    return found


def scan(files: Iterable[Path], texts: dict[str, str]) -> list[str]:
    """Where any of :data:`SECRETS` occurs: ``"<file or text name>: <secret> (<encoding>)"``."""
    patterns = [(s, kind, pattern) for s in SECRETS for kind, pattern in needles(s).items()]
    hits = []
    for path in files:
        data = path.read_bytes()
        hits += [f"{path}: {s} ({kind})" for s, kind, p in patterns if p in data]
    for name, text in texts.items():
        data = text.encode("utf-8", "backslashreplace")
        hits += [f"{name}: {s} ({kind})" for s, kind, p in patterns if p in data]
    return hits


def every_file(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, names in os.walk(root) for f in names]


def exception_texts(name: str, exc: BaseException) -> dict[str, str]:
    """str, repr and the formatted traceback of `exc` and of every exception chained to it."""
    texts = {f"{name} traceback": "".join(traceback.format_exception(exc))}
    seen: set[int] = set()
    current: BaseException | None = exc
    depth = 0
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts[f"{name} [{depth}] str"] = str(current)
        texts[f"{name} [{depth}] repr"] = repr(current)
        current = current.__cause__ or current.__context__
        depth += 1
    return texts


def test_scanner_finds_a_planted_secret(tmp_path):
    (tmp_path / "deep" / "store.zarr").mkdir(parents=True)
    planted = tmp_path / "deep" / "store.zarr" / "zarr.json"
    planted.write_bytes(b'{"attributes": {"url": "opc.tcp://operator:' + SECRET.encode()
                        + b'@plant:4840"}}')
    encoded = tmp_path / "encoded.ipynb"
    encoded.write_bytes(b'{"data": "' + base64.b64encode(b"xy:" + WRONG.encode() + b"!") + b'"}')
    (tmp_path / "clean.log").write_text("connected as operator\n")
    hits = scan(every_file(tmp_path), {"a log": f"password={SECRET[:-1]}",
                                       "a repr": f"Source({WRONG.encode('utf-16-le')!r})"})
    assert f"{planted}: {SECRET} (utf-8)" in hits
    assert any(h.startswith(f"{encoded}: {WRONG} (base64") for h in hits)
    assert not any("clean.log" in h or h.startswith("a log") for h in hits)  # no false alarm
    assert len(hits) == 2


# -- the flows --------------------------------------------------------------------------------

NOTEBOOK_CELLS = [
    """\
import logging, os
logging.basicConfig(filename=os.environ["TB_KERNEL_LOG"], level=logging.DEBUG, force=True)
import twinbench as tb
# credentials: TWINBENCH_OPCUA_* and TWINBENCH_MQTT_* environment variables
opc = tb.connect(os.environ["TB_OPCUA_URL"], {"speed": "ns=2;s=Pump1.speed"},
                 security="encrypt", trust="first-use", cert_dir=os.environ["TB_CERT_DIR"])
opc.start_sync()
print(opc.read_values_sync())
print(opc.status)
opc""",
    """\
mq = tb.connect(os.environ["TB_MQTT_URL"], {"speed": "plant/pump1/telemetry#speed"},
                ca_file=os.environ["TB_CA_FILE"])
mq.start_sync()
batch = mq.read_sync(3.0)
print(len(batch) > 0, mq.status)
mq""",
    """\
opc.stop_sync(); mq.stop_sync()
try:
    tb.connect(os.environ["TB_MQTT_URL"], {"speed": "plant/pump1/telemetry#speed"},
               ca_file=os.environ["TB_CA_FILE"],
               password=os.environ["TB_WRONG_PASSWORD"]).start_sync()
except ConnectionError as exc:
    print("refused:", exc, repr(exc))""",
    """\
# left to fail: the saved notebook keeps the traceback
tb.connect(os.environ["TB_OPCUA_URL"], {"speed": "ns=2;s=Pump1.speed"}, security="encrypt",
           trust="first-use", cert_dir=os.environ["TB_CERT_DIR"],
           password=os.environ["TB_WRONG_PASSWORD"]).start_sync()""",
]


def run_notebook(path: Path, workdir: Path) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in NOTEBOOK_CELLS]
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(workdir)}}).execute()
    nbformat.write(nb, path)
    return nb


async def run_twin(url: str, history: Path) -> dict:
    tags = {name: f"ns=2;s=Pump1.{name}" for name in ("speed", "flow_rate", "motor_temperature")}
    src = tb.connect(url, tags, security="encrypt", publishing_interval=100)  # env credentials
    twin = Twin(tb.models.pump(), src, R={"speed": 4.0, "flow_rate": 1.0,
                                          "motor_temperature": 0.09},
                P0=[1.0, 1e-6, 1.0, 1e-3], max_step=0.5, history=history, flush_interval=0.5)
    twin.start()
    deadline = time.monotonic() + 30
    try:
        while twin.stats["steps"] < 20:
            assert time.monotonic() < deadline, twin.stats
            await asyncio.sleep(0.05)
    finally:
        await twin.stop()
        twin.close()
    # a guarded write, audited to JSON lines
    from twinbench.act import guarded_writer

    async with tb.connect(url, {"speed_setpoint": "ns=2;s=Pump1.speed_setpoint"},
                          security="encrypt") as out:
        writer = guarded_writer(out, {"speed_setpoint": (0, 3600)},
                                audit=history.parent / "audit.jsonl")
        result = await writer.write("speed_setpoint", 2950.0, reason="secret scan", confirm=True)
    return {"twin stats": str(twin.stats), "twin repr": repr(twin),
            "twin source": repr(src) + str(src.status), "write result": repr(result),
            "writer": repr(writer) + repr(out) + str(out.status)}


async def refusals(plant: PlantProcess, cert_dir: Path, other_ca: Path) -> dict[str, str]:
    """Every refusal a wrong credential or an untrusted certificate causes, as texts."""
    texts: dict[str, str] = {}
    attempts = {
        "opcua wrong password": lambda: opcua_source(
            plant.opcua_url, {"speed": SPEED_NODE}, security="encrypt", cert_dir=cert_dir,
            username=USER, password=WRONG, connect_timeout=15.0),
        "opcua untrusted": lambda: opcua_source(
            plant.opcua_url, {"speed": SPEED_NODE}, security="encrypt",
            cert_dir=cert_dir.parent / "empty", username=USER, password=SECRET),
        "mqtt wrong password": lambda: mqtt_source(
            plant.mqtt_url, {"speed": SPEED_TOPIC}, ca_file=plant.mqtt_ca_file, username=USER,
            password=WRONG),
        "mqtt untrusted broker": lambda: mqtt_source(
            plant.mqtt_url, {"speed": SPEED_TOPIC}, ca_file=other_ca, username=USER,
            password=SECRET),
    }
    kinds = {}
    for name, make in attempts.items():
        src = make()
        with pytest.raises((PermissionError, ConnectionError)) as info:
            await src.start()
        kinds[name] = type(info.value)
        texts.update(exception_texts(name, info.value))
        texts[f"{name} source"] = repr(src) + str(src.status)
    assert kinds == {"opcua wrong password": PermissionError,
                     "opcua untrusted": UntrustedCertificate,
                     "mqtt wrong password": ConnectionError,
                     "mqtt untrusted broker": ConnectionError}
    for name, url in {"url with credentials (mqtt)": f"mqtts://{USER}:{SECRET}@127.0.0.1:1",
                      "url with credentials (opcua)": f"opc.tcp://{USER}:{SECRET}@h:4840"}.items():
        with pytest.raises(ValueError) as info:
            tb.connect(url, {"speed": SPEED_NODE if "opc" in url else SPEED_TOPIC})
        texts.update(exception_texts(name, info.value))
    return texts


@pytest.mark.skipif(find_mosquitto() is None, reason="--secure serves MQTT through mosquitto")
def test_no_secret_in_files_logs_or_errors(tmp_path, monkeypatch, caplog, capsys):
    from tests.io.conftest import OPENSSL, make_ca

    if OPENSSL is None:
        pytest.skip("openssl makes the untrusted CA")
    caplog.set_level(logging.DEBUG)
    log_file = tmp_path / "test-run.log"
    file_log = logging.FileHandler(log_file)
    file_log.setLevel(logging.DEBUG)
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.getLogger().addHandler(file_log)
    texts: dict[str, str] = {}
    plant = PlantProcess(["--secure", "--mqtt", "auto", "--state-dir", str(tmp_path / "plant")],
                         env={"TWINBENCH_PLANT_PASSWORD": SECRET},
                         stderr=tmp_path / "plant-stderr.log")
    try:
        plant.start(timeout=60)
        # the credentials reach every flow through the environment, as a user would set them
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
        for proto in ("OPCUA", "MQTT"):
            monkeypatch.setenv(f"TWINBENCH_{proto}_USERNAME", USER)
            monkeypatch.setenv(f"TWINBENCH_{proto}_PASSWORD", SECRET)
        cert_dir = tmp_path / "xdg" / "twinbench" / "opcua"

        # twinbench trust, then record over OPC-UA (NetCDF) and MQTT over TLS (Zarr)
        assert cli(["trust", plant.opcua_url, "--yes"]) == 0
        assert cli(["record", plant.opcua_url, "--security", "encrypt", "--tag",
                    f"speed={SPEED_NODE}", "--duration", "2", "--out",
                    str(tmp_path / "opcua.nc")]) == 0
        monkeypatch.setenv("SSL_CERT_FILE", str(plant.mqtt_ca_file))  # the system trust store
        assert cli(["record", plant.mqtt_url, "--tag", f"speed={SPEED_TOPIC}", "--time-field",
                    "ts", "--duration", "2", "--out", str(tmp_path / "mqtt.zarr")]) == 0
        monkeypatch.delenv("SSL_CERT_FILE")
        assert cli(["record", f"mqtts://{USER}:{SECRET}@127.0.0.1:1", "--tag", "x=t#x",
                    "--duration", "1", "--out", str(tmp_path / "never.nc")]) == 2

        texts.update(asyncio.run(run_twin(plant.opcua_url, tmp_path / "twin-history.zarr")))

        other = tmp_path / "other-ca"
        other.mkdir()
        other_ca, _ = make_ca(other, "not-the-plant-ca")
        texts.update(asyncio.run(refusals(plant, cert_dir, other_ca)))

        monkeypatch.setenv("TB_OPCUA_URL", plant.opcua_url)
        monkeypatch.setenv("TB_MQTT_URL", plant.mqtt_url)
        monkeypatch.setenv("TB_CA_FILE", str(plant.mqtt_ca_file))
        monkeypatch.setenv("TB_CERT_DIR", str(tmp_path / "notebook-client"))
        monkeypatch.setenv("TB_KERNEL_LOG", str(tmp_path / "kernel.log"))
        monkeypatch.setenv("TB_WRONG_PASSWORD", WRONG)
        nb = run_notebook(tmp_path / "secure.ipynb", tmp_path)
    finally:
        logging.getLogger().removeHandler(file_log)
        file_log.close()
        plant.stop()

    # the flows did what they should (a scan of empty files would prove nothing)
    import xarray as xr

    for name, options in {"opcua.nc": {"engine": "scipy"},
                          "mqtt.zarr": {"engine": "zarr", "consolidated": False}}.items():
        with xr.open_dataset(tmp_path / name, **options) as ds:
            assert ds.sizes["time"] > 5, name
            texts[f"{name} (as read)"] = repr(ds) + repr(ds.attrs) + repr(
                {k: v.attrs for k, v in ds.variables.items()})
    assert (tmp_path / "twin-history.zarr").is_dir()
    assert '"speed_setpoint"' in (tmp_path / "audit.jsonl").read_text()
    outputs = [out for cell in nb.cells for out in cell.get("outputs", [])]
    printed = "".join(out.get("text", "") for out in outputs)
    assert "'connected': True" in printed and "True {" in printed and "refused:" in printed
    assert [out["ename"] for out in outputs if out["output_type"] == "error"] == \
        ["PermissionError"]
    kernel_log = (tmp_path / "kernel.log").read_text()
    assert "ActivateSessionRequest" in kernel_log  # DEBUG reached the file
    assert "Sending: ActivateSessionRequest" in log_file.read_text()
    assert any("twinbench" in r.name for r in caplog.records)

    captured = capsys.readouterr()
    texts.update({"pytest log capture": caplog.text, "stdout": captured.out,
                  "stderr": captured.err, "plant stdout": "\n".join(plant.lines)})
    files = every_file(tmp_path)
    assert {p.suffix for p in files} >= {".nc", ".ipynb", ".log", ".jsonl", ".der", ".pem",
                                            ".json"}
    assert scan(files, texts) == []
