"""The real-ComfyUI tier: a pinned ComfyUI with its own venv, stand-in models, and one server for the session.

Where ComfyUI comes from: ``$COMFYUI_PATH`` (a developer's checkout; its python is ``$COMFYUI_PYTHON``,
else this interpreter, and must have the pack installed: ``pip install --no-deps -e .``), or else the
pinned archive ``../shared/comfyui/ComfyUI-0.3.64.tar.gz``, unpacked with a venv of its own into
``.cache/comfyui/<sha256[:12]>/`` once; ``ready`` is written only after a complete set-up, so a broken
half-install is redone and a complete one reused. ComfyUI needs torchvision, and the only pair on local
disk that imports is torch 2.14.1 + torchvision 0.29.1 (a CUDA build that runs on CPU), hence its own
venv rather than the project's. Without either source every test here is skipped with one reason;
``STYLEMAMBA_REQUIRE_COMFYUI=1`` (set by ``.ci/run``) turns that skip into a failure.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARED = REPO.parent / "shared"
ARCHIVE = SHARED / "comfyui" / "ComfyUI-0.3.64.tar.gz"
PHOTOS = SHARED / "assets" / "images"
PACK_LINK = "comfyui-stylemamba"
#: Test-only nodes (``standin_nodes/``), linked into the test server's custom_nodes beside the pack, never shipped.
STANDIN_NODES_LINK = "stylemamba-test-standins"
TORCH = ("torch==2.14.1", "torchvision==0.29.1")
TORCH_FAMILY = re.compile(r"^(torch|torchvision|torchaudio)\s*([<>=!~;\[].*)?$")
SERVER_START_S = 180
#: Free disk the tier needs, measured on a fresh clone: ComfyUI's venv 6.3 GB (the CUDA build of torch) and, at once
#: in the temp folder, the session's stand-ins 4.0 GB plus the CLIP_VISION probe's 1.6 GB. A full disk would otherwise
#: fail the set-up half way and then every later test that writes a file, far from the cause.
ENV_DISK_GB = 7.0
STANDINS_DISK_GB = 6.0
#: Lines printed at the end of the run (set-up time, workflow wall times, error messages): the numbers a reader wants.
REPORT: list[str] = []


@dataclass(frozen=True)
class ComfyEnv:
    """A ComfyUI folder and the python that runs it (with the pack importable as ``comfyui_stylemamba``)."""

    root: Path
    python: Path

    def probe(self, script: Path | str, *args: str, timeout: float = 600) -> dict:
        """Run a probe in ComfyUI's venv (cwd and PYTHONPATH = ComfyUI root); its last stdout line is JSON."""
        script = Path(script)
        if not script.is_absolute():
            script = HERE / "probes" / script
        env = {**os.environ, "PYTHONPATH": str(self.root)}
        done = subprocess.run([str(self.python), str(script), *args], cwd=self.root, env=env,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            pytest.fail(f"probe {script.name} exited {done.returncode}:\n{done.stderr[-4000:]}", pytrace=False)
        lines = done.stdout.strip().splitlines()
        if not lines:
            pytest.fail(f"probe {script.name} printed nothing; stderr:\n{done.stderr[-2000:]}", pytrace=False)
        return json.loads(lines[-1])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder is marked ``comfyui`` (``-m "not comfyui"`` runs the unit tests alone)."""
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.comfyui)


def unavailable_reason() -> str | None:
    if os.environ.get("COMFYUI_PATH") or ARCHIVE.is_file():
        return None
    return f"real-ComfyUI tier skipped: $COMFYUI_PATH is not set and the pinned archive {ARCHIVE} is absent"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Without a ComfyUI, skip every test here for one reason, raised here so the summary folds it into one line;
    fail instead where the tier is required (``STYLEMAMBA_REQUIRE_COMFYUI=1``, as ``.ci/run`` sets)."""
    reason = unavailable_reason()
    if reason is not None and os.environ.get("STYLEMAMBA_REQUIRE_COMFYUI") == "1":
        pytest.fail(f"{reason} (STYLEMAMBA_REQUIRE_COMFYUI=1)", pytrace=False)
    if reason is not None:
        pytest.skip(reason)


def pytest_terminal_summary(terminalreporter) -> None:
    if REPORT:
        terminalreporter.section("real-ComfyUI tier")
        for line in REPORT:
            terminalreporter.write_line(line)


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ComfyUI set-up failed while {what} ({' '.join(command)}):\n{(done.stdout + done.stderr)[-4000:]}")


def link_pack(root: Path) -> None:
    """``root/custom_nodes/comfyui-stylemamba`` -> this checkout; refuse to test some other copy of the pack."""
    link = root / "custom_nodes" / PACK_LINK
    if not link.exists() and not link.is_symlink():
        link.symlink_to(REPO, target_is_directory=True)
    elif link.resolve() != REPO:
        pytest.fail(f"{link} exists and is not this checkout ({REPO}); move it away to run the ComfyUI tier", pytrace=False)


def require_free_disk(folder: Path, gigabytes: float, what: str) -> None:
    """Fail the tier before it fills the disk, naming the folder, what needs the space, and how much is free."""
    free = shutil.disk_usage(folder).free / 1e9
    if free < gigabytes:
        pytest.fail(f"the real-ComfyUI tier needs about {gigabytes:.0f} GB free in {folder} for {what}; "
                    f"{free:.1f} GB are free", pytrace=False)


def build_env(archive: Path, home: Path) -> None:
    """Unpack ComfyUI into ``home/ComfyUI`` with a venv in ``home/venv``; ``home/ready`` marks it complete.

    A failed set-up removes what it wrote (up to 6 GB), so the tests after it keep their disk."""
    shutil.rmtree(home, ignore_errors=True)
    require_free_disk(home.parent, ENV_DISK_GB, "ComfyUI's venv")
    home.mkdir(parents=True)
    try:
        install_env(archive, home)
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise


def install_env(archive: Path, home: Path) -> None:
    """ComfyUI's own requirements with the torch pair that imports here, then the pack's, then the pack itself."""
    with tarfile.open(archive) as tar:
        tar.extractall(home, filter="data")
    root, venv = home / "ComfyUI", home / "venv"  # the archive holds one folder, ComfyUI/
    _run([sys.executable, "-m", "venv", str(venv)], "creating the venv")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, *TORCH], "installing torch and torchvision")
    requirements = [line for line in (root / "requirements.txt").read_text().splitlines()
                    if not TORCH_FAMILY.match(line.strip())]
    (home / "req.txt").write_text("\n".join(requirements) + "\n")
    _run([*pip, "-r", str(home / "req.txt"), "requests"], "installing ComfyUI's requirements")
    _run([*pip, "-r", str(REPO / "requirements.txt")], "installing the pack's requirements")
    _run([*pip, "--no-deps", "-e", str(REPO)], "installing the pack")
    (home / "ready").write_text(f"{' '.join(TORCH)}\n")


def pinned_env(archive: Path, cache: Path) -> tuple[ComfyEnv, str]:
    """The archive's env under ``cache``, built once (under a lock, so parallel sessions wait, not collide)."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:12]
    home = cache / digest
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(cache / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        how = "reused"
        if not (home / "ready").is_file():
            build_env(archive, home)
            how = "built"
    link_pack(home / "ComfyUI")  # checked every session, so a cache never tests another checkout
    return ComfyEnv(home / "ComfyUI", home / "venv" / "bin" / "python"), f"{how} {home} in {time.perf_counter() - start:.0f} s"


@pytest.fixture(scope="session")
def comfyui() -> ComfyEnv:
    """The ComfyUI to test in: ``$COMFYUI_PATH`` if set, else the pinned archive's (built on first use)."""
    if os.environ.get("COMFYUI_PATH"):
        root = Path(os.environ["COMFYUI_PATH"]).resolve()
        if not (root / "main.py").is_file():
            pytest.fail(f"$COMFYUI_PATH={root} is not a ComfyUI folder (no main.py)", pytrace=False)
        link_pack(root)
        REPORT.append(f"ComfyUI: $COMFYUI_PATH {root}")
        return ComfyEnv(root, Path(os.environ.get("COMFYUI_PYTHON", sys.executable)))
    env, how = pinned_env(ARCHIVE, REPO / ".cache" / "comfyui")
    REPORT.append(f"ComfyUI env: {how}")
    return env


@pytest.fixture(scope="session")
def comfy_base(comfyui: ComfyEnv, tmp_path_factory) -> Iterator[Path]:
    """A ComfyUI ``--base-directory`` (models, input, output, custom_nodes) holding the stand-in models.

    The models (4.0 GB) are deleted after the session; pytest keeps the rest of its last three temp trees.
    """
    base = tmp_path_factory.mktemp("comfy_base")
    require_free_disk(base, STANDINS_DISK_GB, "the stand-in models")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_LINK).symlink_to(REPO, target_is_directory=True)
    (base / "custom_nodes" / STANDIN_NODES_LINK).symlink_to(HERE / "standin_nodes", target_is_directory=True)
    try:
        made = comfyui.probe("make_standins.py", str(base), *([str(PHOTOS)] if PHOTOS.is_dir() else []))
        assert (made["sd15_detected_as"], made["flux_detected_as"], made["sd35_detected_as"]) == ("SD15", "Flux", "SD3"), made
        REPORT.append(f"stand-in models written in {made['seconds']} s (the Flux set {made['flux_seconds']} s): {made['files']}")
        yield base
    finally:
        shutil.rmtree(base / "models", ignore_errors=True)


@pytest.fixture(scope="session")
def tier_report() -> list[str]:
    """Append a line here to have it printed in the run's summary (wall times, error messages)."""
    return REPORT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ComfyServer:
    """A running ``main.py --cpu`` on 127.0.0.1 over ``base``; ``log`` holds its stdout and stderr."""

    url: str
    base: Path
    log: Path
    process: subprocess.Popen

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def post(self, path: str, body: dict | None = None) -> None:
        request = urllib.request.Request(self.url + path, data=json.dumps(body or {}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=30).read()


@pytest.fixture(scope="session")
def comfy_server(comfyui: ComfyEnv, comfy_base: Path, tmp_path_factory) -> Iterator[ComfyServer]:
    """One server for every server test: starting one costs ~10 s, loading the stand-ins more."""
    port = free_port()
    log = tmp_path_factory.mktemp("comfy_server") / "server.log"
    command = [str(comfyui.python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--disable-auto-launch", "--base-directory", str(comfy_base), "--database-url", "sqlite:///:memory:"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=comfyui.root, stdout=out, stderr=subprocess.STDOUT)
    server = ComfyServer(f"http://127.0.0.1:{port}", comfy_base, log, process)
    start = time.perf_counter()
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited with {process.returncode} while starting:\n{server.log_text()[-4000:]}", pytrace=False)
            with contextlib.suppress(OSError):
                urllib.request.urlopen(server.url + "/system_stats", timeout=5).read()
                break
            if time.perf_counter() - start > SERVER_START_S:
                pytest.fail(f"ComfyUI did not answer within {SERVER_START_S} s:\n{server.log_text()[-4000:]}", pytrace=False)
            time.sleep(0.5)
        REPORT.append(f"server up in {time.perf_counter() - start:.1f} s")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
