"""A real FHIR R4 server on loopback for integration tests: sekmet-fhir run as a subprocess.

sekmet-fhir (PyPI, pinned 0.1.1) is a FastAPI/uvicorn app backed by SQLite. We run
``python -m uvicorn sekmet.main:app_factory --factory`` with ``SEKMET_CONFIG`` pointing at a
settings.yaml written to a private temporary directory, so nothing lands in the work tree and the
store is in memory (``db_path: ":memory:"``). Its hospital "simulator" is turned off: left on it
answers every POSTed MedicationRequest/Claim/ServiceRequest/Appointment/Task with new resources
(MedicationDispense, ClaimResponse, ...) two seconds later, which pollutes test data.

Auth: with ``token="..."`` the server accepts exactly that static bearer token on ``/fhir/*`` and
answers 401 (``WWW-Authenticate: Bearer realm="sekmet"``) otherwise; ``token=None`` disables auth.
``/fhir/metadata`` is always anonymous. ``smart_clients`` additionally enables sekmet's SMART
Backend Services token endpoint (``POST {root}/auth/token``, grant_type=client_credentials only).
See deployment/fhir-test-server.md for what the server does and does not support.

Usage::

    with start_fhir_server() as server:
        server.load_bundle(bundle)
        r = requests.get(f"{server.base_url}/Patient/p1", headers=server.headers, timeout=10)
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import requests
import yaml

__all__ = [
    "FhirServer",
    "FhirServerError",
    "SmartClient",
    "free_port",
    "sekmet_available",
    "start_fhir_server",
]

JsonDict = dict[str, Any]
FHIR_JSON = "application/fhir+json"
# Variables sekmet reads that would override our settings file.
_SEKMET_ENV = ("SEKMET_CONFIG", "SEKMET_BASE_URL", "SEKMET_DB", "SEKMET_PUBLIC_URL", "SEKMET_PORT")
_URN_UUID = "urn:uuid:"
# Runs in the child: sekmet's ASGI factory under uvicorn, plus a watchdog that exits when the test
# process that started it is gone (even if it was SIGKILLed and could not run its atexit hooks).
_LAUNCHER = """
import os, sys, threading, time
import uvicorn
parent, port = int(sys.argv[1]), int(sys.argv[2])
def _watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(3)
threading.Thread(target=_watch, daemon=True).start()
uvicorn.run("sekmet.main:app_factory", factory=True, host="127.0.0.1", port=port,
            log_level="warning", access_log=False)
"""


class FhirServerError(RuntimeError):
    """The FHIR test server could not be started or refused a request of the helper."""


@dataclass(frozen=True)
class SmartClient:
    """A client registered for sekmet's client_credentials token endpoint (Basic or POST secret)."""

    client_id: str
    client_secret: str
    scopes: str = "system/*.read"
    jwks: Mapping[str, Any] | None = None  # public keys for private_key_jwt (Backend Services)


def sekmet_available() -> bool:
    """True when the sekmet-fhir package is importable by this interpreter."""
    import importlib.util

    return importlib.util.find_spec("sekmet") is not None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class FhirServer:
    """A running sekmet-fhir subprocess. Use start_fhir_server() to make one."""

    port: int
    token: str | None
    workdir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    _owns_workdir: bool = True
    _stopped: bool = field(default=False, repr=False)

    # ---------------- addresses ----------------

    @property
    def root_url(self) -> str:
        """Server root (SMART discovery, /auth/token, /ui)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """FHIR base URL, without a trailing slash."""
        return f"{self.root_url}/fhir"

    @property
    def headers(self) -> dict[str, str]:
        """Accept header plus the bearer token, when the server requires one."""
        h = {"Accept": FHIR_JSON}
        if self.token is not None:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def url(self, path: str) -> str:
        """Absolute URL of a path relative to the FHIR base ("Patient/1", "Observation?...")."""
        return f"{self.base_url}/{path.lstrip('/')}"

    # ---------------- lifecycle ----------------

    def is_running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, max_chars: int = 4000) -> str:
        """The end of the server's combined stdout/stderr."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text[-max_chars:]

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the server (SIGTERM), kill it if it lingers, and remove its work directory."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        proc = self.process
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---------------- data ----------------

    def load_bundle(
        self,
        bundle: JsonDict | str | os.PathLike[str],
        *,
        preserve_ids: bool = True,
        timeout: float = 120.0,
    ) -> JsonDict:
        """POST a Bundle (a dict or a JSON file) to the server as one transaction.

        Synthea-style transaction Bundles (``urn:uuid:`` fullUrls, POST entries) are accepted as
        they are; the server rewrites the ``urn:uuid:`` references itself. With ``preserve_ids``
        (the default) POST entries whose fullUrl is ``urn:uuid:X`` become ``PUT Type/X`` (or the
        resource's own id), so resource ids are predictable and loading twice is idempotent; with
        ``preserve_ids=False`` the server assigns random ids. A ``collection`` Bundle is turned into
        a transaction (PUT when a resource has an id, POST otherwise).

        Returns the transaction-response Bundle; raises FhirServerError on a non-200 answer.
        """
        data = _read_bundle(bundle)
        tx = to_transaction(data, preserve_ids=preserve_ids)
        headers = {**self.headers, "Content-Type": FHIR_JSON}
        body = json.dumps(tx, separators=(",", ":")).encode()
        with requests.post(self.base_url, data=body, headers=headers, timeout=timeout) as r:
            if r.status_code != 200:
                raise FhirServerError(f"transaction failed: HTTP {r.status_code}: {r.text[:2000]}")
            result: JsonDict = r.json()
        return result

    def search_all(
        self,
        resource_type: str,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        *,
        max_pages: int = 100,
        timeout: float = 30.0,
    ) -> list[JsonDict]:
        """Run a search and follow ``next`` links; return every matched resource."""
        out: list[JsonDict] = []
        url: str | None = self.url(resource_type)
        query: Any = params
        with requests.Session() as s:
            s.headers.update(self.headers)
            for _ in range(max_pages):
                if url is None:
                    return out
                with s.get(url, params=query, timeout=timeout) as r:
                    r.raise_for_status()
                    page: JsonDict = r.json()
                query = None  # next links carry the query
                out.extend(
                    e["resource"]
                    for e in page.get("entry", [])
                    if e.get("search", {}).get("mode", "match") == "match"
                )
                url = next_link(page)
        raise FhirServerError(f"search {resource_type} did not end within {max_pages} pages")


def next_link(bundle: Mapping[str, Any]) -> str | None:
    """The URL of a searchset Bundle's ``next`` link, if any."""
    for link in bundle.get("link", []):
        if link.get("relation") == "next":
            url: str = link["url"]
            return url
    return None


def _read_bundle(bundle: JsonDict | str | os.PathLike[str]) -> JsonDict:
    if isinstance(bundle, dict):
        return bundle
    with open(bundle, encoding="utf-8") as f:
        data: JsonDict = json.load(f)
    return data


def to_transaction(bundle: Mapping[str, Any], *, preserve_ids: bool = True) -> JsonDict:
    """A transaction Bundle equivalent to ``bundle`` (see FhirServer.load_bundle)."""
    if bundle.get("resourceType") != "Bundle":
        raise FhirServerError("not a Bundle")
    out: JsonDict = copy.deepcopy(dict(bundle))
    btype = out.get("type")
    entries: list[JsonDict] = out.get("entry") or []
    if btype not in ("transaction", "batch"):
        out["type"] = "transaction"
        for e in entries:
            res = e.get("resource") or {}
            rtype = res.get("resourceType")
            if not rtype:
                raise FhirServerError("collection entry without a resource")
            if res.get("id"):
                e["request"] = {"method": "PUT", "url": f"{rtype}/{res['id']}"}
            else:
                e["request"] = {"method": "POST", "url": rtype}
            e.setdefault("fullUrl", f"{_URN_UUID}{uuid.uuid4()}")
    if preserve_ids:
        for e in entries:
            req = e.get("request") or {}
            full = e.get("fullUrl") or ""
            res = e.get("resource")
            if (
                req.get("method", "").upper() != "POST"
                or not full.startswith(_URN_UUID)
                or not isinstance(res, dict)
                or req.get("ifNoneExist")
            ):
                continue
            rid = res.get("id") or full[len(_URN_UUID) :]
            res["id"] = rid
            e["request"] = {"method": "PUT", "url": f"{res['resourceType']}/{rid}"}
    return out


def _settings(
    port: int,
    token: str | None,
    smart_clients: Sequence[SmartClient],
    validation: str,
    simulator: bool,
    db_path: str,
) -> JsonDict:
    types: list[str] = []
    if token is not None:
        types.append("bearer")
    if smart_clients:
        types.append("smart")
    return {
        "base_url": f"http://127.0.0.1:{port}/fhir",
        "host": "127.0.0.1",
        "port": port,
        "db_path": db_path,
        "data_dir": "data",
        "log_inbound": False,  # no traffic log: keeps the in-memory store small and fast
        "simulator": {"enabled": simulator},
        "validation": {"inbound": validation},
        "server_auth": {
            "types": types or ["none"],
            "tokens": [token] if token is not None else [],
            "smart_clients": [
                {
                    "client_id": c.client_id,
                    "client_secret": c.client_secret or None,
                    "scopes": c.scopes,
                    **({"jwks": dict(c.jwks)} if c.jwks is not None else {}),
                }
                for c in smart_clients
            ],
        },
    }


def _wait_ready(server: FhirServer, deadline: float) -> None:
    url = f"{server.base_url}/metadata"
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not server.is_running():
            raise FhirServerError(
                f"sekmet-fhir exited with code {server.process.returncode} before answering;"
                f" log tail:\n{server.log_tail()}"
            )
        try:
            with requests.get(url, timeout=2, headers={"Accept": FHIR_JSON}) as r:
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
        except requests.RequestException as e:
            last = type(e).__name__
        time.sleep(0.1)
    raise FhirServerError(
        f"sekmet-fhir did not answer {url} in time (last: {last}); log tail:\n{server.log_tail()}"
    )


def start_fhir_server(
    *,
    port: int | None = None,
    token: str | None = "test-token",
    smart_clients: Sequence[SmartClient] = (),
    validation: Literal["strict", "warn", "off"] = "strict",
    simulator: bool = False,
    db_path: str | None = None,
    startup_timeout: float = 20.0,
    workdir: str | os.PathLike[str] | None = None,
) -> FhirServer:
    """Start sekmet-fhir on 127.0.0.1 and return once ``/fhir/metadata`` answers 200.

    port: a fixed port, or None for a free one (retried on a lost race).
    token: the one static bearer token accepted on /fhir/*; None turns auth off.
    smart_clients: clients for sekmet's client_credentials token endpoint (enables SMART tokens).
    validation: sekmet's inbound structural validation (fhir.resources R4B models).
    simulator: sekmet's lab/pharmacy/payer simulator; keep it off for deterministic data.
    db_path: SQLite file; None keeps the store in memory (lost on stop).
    workdir: directory for settings and log (kept); None uses a temporary one (removed on stop).
    """
    if not sekmet_available():
        raise FhirServerError("sekmet-fhir is not installed: pip install sekmet-fhir==0.1.1")
    attempts = 1 if port is not None else 3
    last_error: FhirServerError | None = None
    for _ in range(attempts):
        try:
            return _start_once(
                port if port is not None else free_port(),
                token,
                smart_clients,
                validation,
                simulator,
                db_path,
                startup_timeout,
                workdir,
            )
        except FhirServerError as e:
            last_error = e
            if "address already in use" not in str(e).lower():
                raise
    assert last_error is not None
    raise last_error


def _start_once(
    port: int,
    token: str | None,
    smart_clients: Sequence[SmartClient],
    validation: str,
    simulator: bool,
    db_path: str | None,
    startup_timeout: float,
    workdir: str | os.PathLike[str] | None,
) -> FhirServer:
    owns = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="sekmet-fhir-")) if workdir is None else Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    settings = _settings(port, token, smart_clients, validation, simulator, db_path or ":memory:")
    config = wd / "settings.yaml"
    config.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    log_path = wd / "server.log"
    env = {k: v for k, v in os.environ.items() if k not in _SEKMET_ENV}
    env["SEKMET_CONFIG"] = str(config)
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-c", _LAUNCHER, str(os.getpid()), str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=wd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal does not hit the server first
        )
    server = FhirServer(
        port=port, token=token, workdir=wd, process=proc, log_path=log_path, _owns_workdir=owns
    )
    atexit.register(server.stop)
    try:
        _wait_ready(server, time.monotonic() + startup_timeout)
    except BaseException:
        server.stop()
        raise
    return server
