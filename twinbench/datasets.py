"""Sample recordings of the simulated plant and its tag maps, shipped in the source tree's ``data/``.

Each recording was made by running ``twinbench plant`` and recording it with ``twinbench record``
(:data:`SAMPLES` holds the recipes; ``data/README.md`` the exact commands). Load one by name and
replay it through a twin as if it were live:

>>> import twinbench as tb
>>> ds = tb.datasets.load("bearing_fault")
>>> ds.attrs["twinbench_plant_faults"], ds.vibration.attrs["units"]
('bearing_wear:5', 'mm/s')
>>> source = tb.replay(ds, speed=None)  # then tb.Twin(tb.models.pump(), source, R=...)

``tests/test_datasets.py`` replays each through a pump twin and checks what it detects.

Regenerate them (real time: about two minutes each; needs mosquitto for the MQTT one)::

    python -m twinbench.datasets --out data                # all of them
    python -m twinbench.datasets --out data bearing_fault  # one

The plant is seeded, so the sensor noise is drawn from the same stream each time, but the
recordings are not bit-for-bit reproducible: the plant runs in real time, so how long it ran before
the recorder subscribed, how many ticks a busy machine skips (each skipped tick folds its simulated
time into the next one) and which ticks a publishing interval catches all vary from run to run.
Times are the simulated clock, which starts at the wall-clock time the plant started.

The files are found in the ``data/`` folder beside the package (a source checkout or an editable
install), else in ``./data`` or the current directory; a wheel does not carry them.

Examples
--------
>>> sorted(SAMPLES)
['bearing_fault', 'healthy', 'sensor_drift']
>>> sample_path("healthy").name
'healthy.nc'
>>> SAMPLES["bearing_fault"].faults
('bearing_wear:5',)
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SAMPLES", "TAG_MAPS", "Sample", "data_dir", "load", "regenerate", "sample_path",
           "tag_map_path"]


@dataclass(frozen=True)
class Sample:
    """How one sample recording is made: the plant's options and the recorder's.

    Attributes
    ----------
    name : str
        File stem: ``data/<name>.nc``.
    description : str
        One line: what the recording shows (the file's ``summary`` attr).
    seed : int
        The plant's sensor-noise seed (``--seed``).
    faults : tuple of str
        The plant's fault specs (``--fault``), active from its start.
    protocol : {"opcua", "mqtt"}
        What the recorder subscribes to; the tag map is ``data/pump_<protocol>_tags.yaml``.
    speedup : float
        Simulated seconds per wall-clock second (``--speedup``).
    rate : float
        Plant ticks per wall-clock second (``--rate``): one row every ``speedup / rate``
        simulated seconds.
    duration : float
        Wall-clock seconds recorded (``--duration``); ``duration * speedup`` simulated.
    """

    name: str
    description: str
    seed: int
    faults: tuple[str, ...] = ()
    protocol: str = "opcua"
    speedup: float = 120.0
    rate: float = 10.0
    duration: float = 120.0

    @property
    def tag_map(self) -> str:
        """The tag map's file name in ``data/``."""
        return TAG_MAPS[self.protocol]

    def plant_command(self, opcua_port: int = 4840) -> list[str]:
        """The ``twinbench plant`` command line (MQTT only when the recording needs it)."""
        cmd = ["twinbench", "plant", "--opcua-port", str(opcua_port),
               "--mqtt", "auto" if self.protocol == "mqtt" else "none",
               "--seed", str(self.seed), "--speedup", f"{self.speedup:g}",
               "--rate", f"{self.rate:g}"]
        for fault in self.faults:
            cmd += ["--fault", fault]
        return cmd

    def record_command(self, url: str, out: str | os.PathLike[str] | None = None,
                       tags: str | os.PathLike[str] | None = None) -> list[str]:
        """The ``twinbench record`` command line against the plant at `url`."""
        # The plant's clock runs `speedup` times faster than the wall clock, so its stamps lie
        # hours ahead of the receive time: accept up to a day ahead rather than replace them.
        cmd = ["twinbench", "record", "--tags", str(tags or f"data/{self.tag_map}"),
               "--duration", f"{self.duration:g}", "--max-clock-skew", "86400"]
        if self.protocol == "mqtt":
            # the plant stamps each message with its simulated time: record that, not arrival
            cmd += ["--time-field", "ts", "--time-format", "epoch_ms"]
        else:
            cmd += ["--publishing-interval", f"{1000.0 / self.rate:g}"]
        return [*cmd, "--out", str(out or f"data/{self.name}.nc"), url]


#: The tag maps in ``data/`` by protocol: every measurement of the plant's pump, with units and
#: long names (over OPC-UA also its speed setpoint and valve opening, which MQTT does not publish).
TAG_MAPS = {"opcua": "pump_opcua_tags.yaml", "mqtt": "pump_mqtt_tags.yaml"}

#: The sample recordings: about four simulated hours of the plant's pump each, a row every 12 s.
SAMPLES = {s.name: s for s in (
    Sample("healthy", "the pump at its defaults, no fault", seed=1),
    Sample("bearing_fault", "a bearing fault developing: wear 5x the fault rate, vibration rising "
           "from 1.2 towards 2.7 mm/s", seed=2, faults=("bearing_wear:5",)),
    Sample("sensor_drift", "the flowmeter drifting +3 m3/h per hour, the pump itself healthy "
           "(recorded over MQTT)", seed=3, faults=("drift:flow_rate:3",), protocol="mqtt"),
)}


def data_dir() -> Path:
    """The ``data/`` folder: beside the package (source tree, editable install), else ``./data``.

    Raises
    ------
    FileNotFoundError
        Naming the places looked at.

    Examples
    --------
    >>> (data_dir() / "README.md").is_file()
    True
    """
    candidates = [Path(__file__).resolve().parents[1] / "data", Path.cwd() / "data"]
    for path in candidates:
        if (path / TAG_MAPS["opcua"]).is_file():
            return path
    raise FileNotFoundError(f"data: the sample data folder is not in {', '.join(map(str, candidates))}"
                            f" (it ships with the source tree, not with a wheel)")


def _check_name(name: Any) -> Sample:
    if isinstance(name, Sample):
        return name
    if name not in SAMPLES:
        raise ValueError(f"name: expected one of {sorted(SAMPLES)}, got {name!r}")
    return SAMPLES[name]


def sample_path(name: str) -> Path:
    """The path of the sample recording `name` (see :data:`SAMPLES`).

    Examples
    --------
    >>> sample_path("sensor_drift").is_file()
    True
    """
    return data_dir() / f"{_check_name(name).name}.nc"


def tag_map_path(protocol: str = "opcua") -> Path:
    """The path of the plant's pump tag map for `protocol` ("opcua" or "mqtt"), for
    ``tb.connect(url, tag_map_path())``.

    Examples
    --------
    >>> from twinbench.io.tags import tag_map
    >>> tag_map(tag_map_path("mqtt"))["vibration"]
    MqttAddress('plant/pump1/telemetry#vibration')
    """
    if protocol not in TAG_MAPS:
        raise ValueError(f"protocol: expected one of {sorted(TAG_MAPS)}, got {protocol!r}")
    return data_dir() / TAG_MAPS[protocol]


def load(name: str) -> Any:
    """The sample recording `name` as an xarray Dataset (loaded into memory), ready for
    :func:`twinbench.replay`.

    Examples
    --------
    >>> ds = load("healthy")
    >>> ds.attrs["twinbench_sample"], "twinbench plant" in ds.attrs["command"]
    ('healthy', True)
    """
    import xarray as xr

    with xr.open_dataset(sample_path(name), engine="scipy") as ds:
        return ds.load()


# -- regeneration ---------------------------------------------------------------------------------

def _twinbench() -> list[str]:
    # The console script of this interpreter's environment, else the module: the plant and the
    # recorder must be this twinbench, not another one on PATH.
    script = Path(sys.executable).with_name("twinbench")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "twinbench"]


def _wait_for_plant(proc: subprocess.Popen, timeout: float) -> dict[str, str]:
    """The plant's endpoint URLs once it printed "ready" (RuntimeError with its output if not)."""
    import queue
    import threading

    # A thread reads the pipe: select() on a buffered text stream misses lines read ahead.
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line.rstrip())
        lines.put(None)

    threading.Thread(target=pump, name="twinbench-plant-output", daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if line.strip() == "twinbench plant ready":
            text = "\n".join(seen)
            return {kind: m.group(1) for kind in ("opcua", "mqtt")
                    if (m := re.search(rf"^{kind} (\S+)", text, re.MULTILINE))}
    raise RuntimeError(f"twinbench plant did not become ready within {timeout:g} s:\n"
                       + "\n".join(seen))


def regenerate(name: str | Sample, out_dir: str | os.PathLike[str] | None = None, *,
               timeout: float = 120.0) -> Path:
    """Make the sample recording `name` again: start the plant, record it, add the provenance.

    Runs in real time (:attr:`Sample.duration` seconds plus start-up). The file gets these attrs
    besides the recorder's: ``twinbench_sample``, ``summary``, ``command`` (the two commands, as
    run, with the plant's port), ``twinbench_regenerate``, ``twinbench_version``,
    ``date_created``, ``twinbench_plant_seed``, ``twinbench_plant_faults``,
    ``twinbench_plant_speedup``, ``twinbench_plant_rate``, and a ``history`` line.

    Parameters
    ----------
    name : str or Sample
        A key of :data:`SAMPLES`, or a recipe of one's own.
    out_dir : path, optional
        Where to write ``<name>.nc`` (default: :func:`data_dir`). The tag map is read from
        :func:`data_dir`.
    timeout : float
        Seconds to wait for the plant to start.

    Returns
    -------
    pathlib.Path
    """
    import twinbench
    from twinbench.io.record import write_dataset

    sample = _check_name(name)
    out = Path(out_dir) if out_dir is not None else data_dir()
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{sample.name}.nc"
    tags = data_dir() / sample.tag_map
    exe = _twinbench()
    plant_cmd = sample.plant_command(opcua_port=0)
    proc = subprocess.Popen([*exe, *plant_cmd[1:]], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    try:
        urls = _wait_for_plant(proc, timeout)
        url = urls.get("mqtt" if sample.protocol == "mqtt" else "opcua")
        if url is None:
            raise RuntimeError(f"twinbench plant offers no {sample.protocol} endpoint: {urls}")
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / target.name
            record_cmd = sample.record_command(url, out=raw, tags=tags)
            subprocess.run([*exe, *record_cmd[1:]], check=True,
                           timeout=sample.duration + timeout)
            ds = _load_file(raw)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # the commands as a reader would type them, from the repository's root
    port = re.search(r":(\d+)", urls["opcua"]).group(1)
    shown_plant = sample.plant_command(opcua_port=int(port))
    shown_record = sample.record_command(url)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ds.attrs.update({
        "title": f"twinbench sample recording: {sample.name}",
        "summary": sample.description,
        "source": f"twinbench plant (simulated pump Pump1) recorded over {sample.protocol} "
                  f"with twinbench record",
        "twinbench_sample": sample.name,
        "twinbench_source_url": ds.attrs.get("source", url),
        "command": f"{shlex.join(shown_plant)} & {shlex.join(shown_record)}",
        "twinbench_regenerate": f"python -m twinbench.datasets --out data {sample.name}",
        "twinbench_version": twinbench.__version__,
        "date_created": created,
        "twinbench_plant_seed": sample.seed,
        "twinbench_plant_faults": ",".join(sample.faults) or "none",
        "twinbench_plant_speedup": sample.speedup,
        "twinbench_plant_rate": sample.rate,
        "comment": "Seeded, but not bit-for-bit reproducible: the plant runs in real time, so the "
                   "start offset, skipped ticks and the rows caught vary between runs. Times are "
                   "the plant's simulated clock.",
        "history": f"{ds.attrs.get('history', '')}\n{created} twinbench.datasets.regenerate"
                   f"({sample.name!r}): provenance attrs added".lstrip(),
    })
    write_dataset(ds, target)
    return target


def _load_file(path: Path) -> Any:
    import xarray as xr

    with xr.open_dataset(path, engine="scipy") as ds:
        ds = ds.load()
    for var in ds.variables.values():
        # written again by write_dataset, which sets the netCDF3 encodings itself
        var.encoding.clear()
        var.attrs.pop("_Unsigned", None)
    return ds


def main(argv: list[str] | None = None) -> int:
    """``python -m twinbench.datasets [--out DIR] [NAME ...]``: regenerate sample recordings."""
    parser = argparse.ArgumentParser(
        prog="python -m twinbench.datasets",
        description="Regenerate the sample recordings: run `twinbench plant` and record it with "
                    "`twinbench record` (real time, about two minutes each).")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"which ones (default all): {', '.join(SAMPLES)}")
    parser.add_argument("--out", default=None, help="output folder (default: data/)")
    parser.add_argument("--print", action="store_true", dest="show",
                        help="only print the commands")
    args = parser.parse_args(argv)
    names = args.names or list(SAMPLES)
    for name in names:
        if name not in SAMPLES:
            parser.error(f"NAME: expected one of {', '.join(SAMPLES)}, got {name!r}")
    if "mqtt" in {SAMPLES[n].protocol for n in names} and not args.show \
            and not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        print("note: no mosquitto found; the plant falls back to amqtt if installed",
              file=sys.stderr)
    for name in names:
        sample = SAMPLES[name]
        if args.show:
            # OPC-UA: the plant's default endpoint; MQTT: the broker URL the plant prints
            url = "opc.tcp://127.0.0.1:4840/twinbench/plant" if sample.protocol == "opcua" \
                else "MQTT_URL"
            print(f"{shlex.join(sample.plant_command())} & "
                  f"{shlex.join(sample.record_command(url))}")
            continue
        started = time.monotonic()
        path = regenerate(name, args.out)
        print(f"{path}: {path.stat().st_size / 1e3:.0f} kB in "
              f"{time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
