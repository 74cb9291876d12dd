"""The Binder configuration (binder/): what repo2docker would build from it, and its postBuild
and start scripts run for real in a fresh virtual environment.

There is no container engine here, so the image itself is never built: ``jupyter-repo2docker
--no-build`` prints the Dockerfile it would build, and the tests check that it holds our steps.
The scripts are then run the way that Dockerfile runs them (binder/requirements.txt installed
first, postBuild in the repository's root, start with the server's command as arguments), in a
new virtual environment and a copy of the repository, so that no build output lands in the
working tree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from twinbench.plant._broker import find_mosquitto

REPO = Path(__file__).resolve().parents[1]
BINDER = REPO / "binder"

# Tracked files that the build needs none of (the venv copy of the repository skips them).
NOT_COPIED = ("data/", "tests/", "notebooks/", "extensions/", ".ci/")


def _requirement_name(line: str) -> str:
    name = re.split(r"[\s<>=!~;\[]", line.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(lines: list[str]) -> set[str]:
    return {_requirement_name(line) for line in lines
            if line.strip() and not line.lstrip().startswith("#")}


def test_requirements_cover_the_package() -> None:
    """binder/requirements.txt (installed before the repository is copied in) lists every
    dependency and build requirement of the package, so that postBuild only builds twinbench."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = _requirement_names([*pyproject["project"]["dependencies"],
                                 *pyproject["build-system"]["requires"]])
    listed = _requirement_names((BINDER / "requirements.txt").read_text().splitlines())
    assert needed <= listed, f"missing from binder/requirements.txt: {sorted(needed - listed)}"


def test_repo2docker_dockerfile() -> None:
    """The Dockerfile repo2docker would build: Python 3.11, the apt packages, the requirements
    before the repository, postBuild after it, start as the entrypoint."""
    r2d = shutil.which("jupyter-repo2docker", path=str(Path(sys.executable).parent))
    assert r2d, "jupyter-repo2docker is not installed (pyproject.toml's test extra has it)"
    # --no-build: print the Dockerfile instead of building it; no container engine needed.
    # Binder's user (uid 1000), not ours: repo2docker defaults to the uid it is run by.
    done = subprocess.run([r2d, "--no-build", "--no-run", "--user-id", "1000", "--user-name",
                           "jovyan", str(REPO)], check=False, capture_output=True, text=True,
                          timeout=120, cwd=REPO.parent)
    assert done.returncode == 0, done.stderr
    dockerfile, log = done.stdout, done.stderr
    assert "Building conda environment for python=3.11" in log, log
    assert re.search(r"apt-get install --yes --no-install-recommends mosquitto "
                     r"mosquitto-clients\b", dockerfile), dockerfile
    steps = [line for line in dockerfile.splitlines() if line.startswith(("RUN", "COPY", "ENV"))]
    requirements = next(i for i, s in enumerate(steps)
                        if s.endswith('pip install --no-cache-dir -r "binder/requirements.txt"'))
    # The repository belongs to the user who runs postBuild, which builds inside it.
    copy_repo = steps.index("COPY --chown=1000:1000 src/ ${REPO_DIR}/")
    post_build = steps.index("RUN ./binder/postBuild")
    assert requirements < copy_repo < post_build, steps
    users = [s for s in dockerfile.split("RUN ./binder/postBuild")[0].splitlines()
             if s.startswith("USER ")]
    assert users[-1] == "USER ${NB_USER}", users
    assert 'ENV R2D_ENTRYPOINT="${REPO_DIR}/binder/start"' in steps, steps


def _run(cmd: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout,
                          **kwargs)
    assert done.returncode == 0, (f"{cmd} exited with {done.returncode}\n--- stdout\n"
                                  f"{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}")
    return done


@pytest.fixture(scope="module")
def binder_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A copy of the repository's tracked files and a new venv with binder/requirements.txt
    installed and binder/postBuild run, as repo2docker would; the environment to run in and
    how long each step took."""
    root = tmp_path_factory.mktemp("binder")
    repo = root / "repo"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for rel in tracked:
        if rel and not rel.startswith(NOT_COPIED) and (REPO / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, repo / rel)

    times: dict[str, float] = {}
    start = time.monotonic()
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    times["venv"] = time.monotonic() - start
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(PATH=os.pathsep.join([str(venv / "bin"), env.get("PATH", "")]),
               VIRTUAL_ENV=str(venv), PIP_NO_INPUT="1")

    # repo2docker's step before postBuild. --no-compile: byte-compiling every installed module
    # is a good part of the install time, and the few modules this test imports are compiled
    # when first imported anyway.
    start = time.monotonic()
    _run(["python", "-m", "pip", "install", "--quiet", "--no-compile", "-r",
          "binder/requirements.txt"], timeout=900, cwd=repo, env=env)
    times["requirements"] = time.monotonic() - start

    start = time.monotonic()
    _run(["./binder/postBuild"], timeout=900, cwd=repo, env=env)
    times["postBuild"] = time.monotonic() - start
    print(f"binder venv: {', '.join(f'{k} {v:.0f} s' for k, v in times.items())}")
    yield {"root": root, "repo": repo, "venv": venv, "env": env, "times": times}
    # ~700 MB that pytest would keep for its last three runs; the plant's log stays.
    shutil.rmtree(venv, ignore_errors=True)
    shutil.rmtree(repo, ignore_errors=True)


# What the notebook server's command is replaced by: reads the plant's endpoints from the
# environment start exported, as the notebooks do, and one value over OPC-UA.
CLIENT = """
import asyncio, json, os
import twinbench
from asyncua import Client

async def read():
    async with Client(os.environ["TWINBENCH_OPCUA_URL"], timeout=10) as client:
        return await client.get_node("ns=2;s=Pump1.speed").read_value()

print(json.dumps({"speed": asyncio.run(read()), "twinbench": twinbench.__file__,
                  "compiled": twinbench.models.pump().has_compiled,
                  "opcua": os.environ["TWINBENCH_OPCUA_URL"],
                  "mqtt": os.environ.get("TWINBENCH_MQTT_URL"),
                  "pid": os.environ["TWINBENCH_PLANT_PID"]}))
"""


@pytest.mark.slow  # ~2.5 min on an idle 2-core machine: a new venv and the whole kernel build
def test_postbuild_and_start(binder_venv: dict[str, Any]) -> None:
    """postBuild installed the compiled package into the venv; start launches the plant, exports
    its endpoints and runs the command it is given, which reads from the plant."""
    root, env = binder_venv["root"], dict(binder_venv["env"])
    log = root / "plant.log"
    # A free OPC-UA port rather than 4840, which another plant on this machine may hold.
    env.update(TWINBENCH_PLANT_LOG=str(log), TWINBENCH_PLANT_ARGS="--speedup 60 --opcua-port 0")
    pidfile = root / "plant.pid"
    try:
        # cwd outside the copy: `import twinbench` must find the installed, compiled package.
        done = _run([str(binder_venv["repo"] / "binder" / "start"), "python", "-c", CLIENT],
                    timeout=120, cwd=root, env=env)
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert "binder/start: twinbench plant ready" in done.stderr, done.stderr
        assert out["twinbench"].startswith(str(binder_venv["venv"])), out
        assert out["compiled"], out
        assert isinstance(out["speed"], float) and out["speed"] > 0, out
        assert out["opcua"].startswith("opc.tcp://127.0.0.1:"), out
        if find_mosquitto():
            assert out["mqtt"] and out["mqtt"].startswith("mqtt://127.0.0.1:"), out
        assert pidfile.read_text().strip() == out["pid"]
    finally:
        # The plant outlives the command (in a container it lives as long as the server).
        if pidfile.exists():
            pid = int(pidfile.read_text())
            try:
                plant = psutil.Process(pid)
                plant.send_signal(signal.SIGTERM)
                try:
                    plant.wait(15)
                except psutil.TimeoutExpired:
                    plant.kill()
                    raise AssertionError("the plant did not exit within 15 s of SIGTERM")
            except psutil.NoSuchProcess:
                pass


def test_start_without_plant(tmp_path: Path) -> None:
    """A plant that cannot start does not keep the server from starting: start says so and
    still runs its command (here the project's own `twinbench`, given a bad option), whose exit
    code is the script's."""
    env = dict(os.environ, TWINBENCH_PLANT_LOG=str(tmp_path / "plant.log"),
               TWINBENCH_PLANT_ARGS="--no-such-option")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("TWINBENCH_OPCUA_URL", None)
    done = subprocess.run([str(BINDER / "start"), "sh", "-c",
                           'echo "opcua=${TWINBENCH_OPCUA_URL:-unset}"; exit 3'],
                          check=False, capture_output=True, text=True, timeout=90, cwd=tmp_path,
                          env=env)
    assert done.returncode == 3, done
    assert done.stdout == "opcua=unset\n", done
    assert "the twinbench plant is not ready" in done.stderr, done.stderr
    assert "unrecognized arguments: --no-such-option" in done.stderr, done.stderr
