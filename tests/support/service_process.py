"""``cds-service serve`` as a separate process on a free 127.0.0.1 port, as an operator runs it.

Its stderr (the service's whole log) goes to a file the test reads; ``stop()`` sends SIGTERM to the
process group (the uvicorn parent and its workers) and returns the exit status, so graceful
shutdown is observed too. Use it as a context manager.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import requests

from tests.support.fhir_server import free_port

REPO = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).with_name("cds-service")


class ServiceProcess:
    def __init__(self, workdir: Path, *, workers: int = 1, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.log_path = workdir / "service.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "PROMETHEUS_"))}
        self.env = {"CDS_FEEDBACK_DB_URL": f"sqlite:///{workdir}/cds.sqlite3", **base, **(env or {})}
        self.command = [str(CLI), "serve", "--port", str(self.port), "--workers", str(workers)]
        self._process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Self:
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command, cwd=self.workdir, env=self.env, stdout=log, stderr=log, start_new_session=True
            )
        ends = time.monotonic() + timeout
        while time.monotonic() < ends:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"cds-service serve exited {self._process.returncode}: {self.log()[-2000:]}"
                )
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("cds-service serve did not become ready")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self._process is None or self.returncode is not None:
            return self.returncode
        try:
            os.killpg(self._process.pid, signal.SIGTERM)
            self.returncode = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self.returncode = self._process.wait(10)
        except ProcessLookupError:
            self.returncode = self._process.wait(10)
        return self.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
