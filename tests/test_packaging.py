"""The package as a user installs it: a wheel (not editable) carrying the mappings and the LICENSE.

The wheel is built, installed with ``--no-deps`` into a new virtual environment that borrows this
environment's dependencies through a ``.pth`` line (the line adds the directory only: the editable
install's own ``.pth`` there is not run, so the wheel's copy of cds_service is the one imported), and
run from a directory outside the repository. .ci/smoke-wheel.sh does the same with a full install.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.conftest import DATA, REPO

MAPPINGS = REPO / "mappings"
LIZ = next((DATA / "synthea").glob("Liz_Conn_*.json"))


# What a build needs, copied out of the work tree so that no stale build/ directory can leak into it.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "cds_service", "mappings")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(source)])
    (built,) = out.glob("cds_service-*.whl")
    return built


def test_wheel_carries_every_module_of_the_package(wheel: Path) -> None:
    """setup.py finds the packages: one added later under cds_service/ must not be left out."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    package = REPO / "cds_service"
    expected = {p.relative_to(REPO).as_posix() for p in package.rglob("*") if p.suffix in {".py", ".html"}}
    assert {"cds_service/engine/loader.py", "cds_service/smart/templates/app.html"} <= expected
    assert sorted(expected - names) == []


def test_wheel_carries_every_mapping_file_and_the_license(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        headers = archive.read(metadata).decode()
        (license_name,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        license_text = archive.read(license_name).decode()
    files = [p for p in MAPPINGS.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    expected = {f"cds_service/mappings/{p.relative_to(MAPPINGS).as_posix()}" for p in files}
    assert {".yaml", ".md"} <= {p.suffix for p in files}
    assert sorted(expected - names) == []
    assert "License-Expression: Apache-2.0" in headers.splitlines()
    assert license_text == (REPO / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with the wheel installed (not editable); its bin/ directory."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)])
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip()
    Path(purelib, "borrowed-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)]
    )
    return venv / "bin"


def test_installed_wheel_finds_its_own_mappings_from_another_directory(
    installed: Path, tmp_path: Path
) -> None:
    code = "import cds_service.engine.loader as m; print(m.__file__); print(m.DEFAULT_MAPPINGS)"
    module, mappings = _run([str(installed / "python"), "-c", code], cwd=tmp_path).splitlines()
    site = installed.parent / "lib"
    assert Path(module).is_relative_to(site) and Path(mappings).is_relative_to(site)
    assert Path(mappings).name == "mappings" and Path(mappings).parent.name == "cds_service"

    out = _run([str(installed / "cds-service"), "check-mappings"], cwd=tmp_path)
    packaged = sorted(p.stem for p in (REPO / "mappings" / "trials").glob("*.yaml"))
    assert f"{len(packaged)} trial(s)" in out and " 0 failed" in out

    out = _run(
        [str(installed / "cds-service"), "evaluate", str(LIZ), "--as-of", "2026-06-01", "--json"],
        cwd=tmp_path,
    )
    assert sorted(trial["trial"] for trial in json.loads(out)["trials"]) == packaged


def test_installed_wheel_serves_discovery_from_another_directory(installed: Path, tmp_path: Path) -> None:
    port = _free_port()
    with (tmp_path / "serve.log").open("wb") as log:
        server = subprocess.Popen(
            [str(installed / "cds-service"), "serve", "--port", str(port)],
            cwd=tmp_path,
            env=_clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            services = _wait_for_discovery(port, server)
        finally:
            server.terminate()
            server.wait(timeout=30)
    assert [service["id"] for service in services] == ["trial-eligibility"]
    assert (tmp_path / "cds-feedback.sqlite3").is_file()  # the default database is in the working directory


def _wait_for_discovery(port: int, server: subprocess.Popen[bytes]) -> list[dict[str, object]]:
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, "serve exited before answering"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/cds-services", timeout=5) as response:
                services: list[dict[str, object]] = json.load(response)["services"]
                return services
        except OSError:
            assert time.monotonic() < deadline, "serve did not answer within 60 s"
            time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _clean_env() -> dict[str, str]:
    """No CDS_* setting and no PYTHONPATH from the caller: the install alone must be enough."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CDS_") and k != "PYTHONPATH"}


def _run(argv: list[str], *, cwd: Path | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{argv[:3]} exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout
