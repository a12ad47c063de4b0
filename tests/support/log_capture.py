"""A pytest plugin: capture the whole test run's logs, then check they hold no test patient's data.

Loaded from ``tests/conftest.py`` (``pytest_plugins``). At configure time a handler is put on the
root logger, whose level is lowered to DEBUG for the session, and every record *in scope* is written,
formatted (message with its args, exception and stack text), to ``test-artifacts/test-run.log``
(gitignored; ``CDS_TEST_LOG`` overrides the path). At session end the file is scanned, and any hit
fails the run: the exit status becomes 1 and a "PHI in test logs" section lists each hit.

In scope, i.e. what a deployed service writes, plus its own DEBUG lines:

* ``cds_service`` and its children at every level, DEBUG included;
* every other logger at INFO and above (``serve`` configures the root logger at INFO), except
  ``urllib3`` at WARNING and above (``serve`` sets it so: its DEBUG lines carry query strings such as
  ``patient=<id>``). Third-party DEBUG is not emitted by a deployed service, so it is not the
  service's log; it still reaches pytest's own per-test capture.

What the scan looks for (``needles()``):

* every test patient's names (given and family), ``Patient.id`` and ``identifier`` values (SSN,
  MRN, driver's licence...), from ``tests/data/synthea/*.json``, the mapping test vectors
  (``mappings/tests/**``, ``tests/data/all-constructs/tests/**``) and ``../shared/data/synthea``
  when present; each matched as a whole token (not inside a longer word or id);
* secrets: values given to ``register_secret()``, plus, by convention, string constants of the
  test sources assigned to a name containing TOKEN, SECRET or PASSWORD, or passed as
  ``access_token=`` / ``token=`` / ``client_secret=`` (8 characters or more);
* any JWT (``eyJ...``.``...``.), any ``Bearer <credential>``, and any ``Authorization`` header.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_LOG = REPO / "test-artifacts" / "test-run.log"
PATIENT_SOURCES = (
    (REPO / "tests" / "data" / "synthea", "*.json"),
    (REPO.parent / "shared" / "data" / "synthea", "*.json"),
    (REPO / "mappings" / "tests", "**/*.yaml"),
    (REPO / "tests" / "data" / "all-constructs" / "tests", "**/*.yaml"),
)
SERVICE_LOGGER = "cds_service"
THIRD_PARTY_LEVELS = {"urllib3": logging.WARNING}
THIRD_PARTY_DEFAULT = logging.INFO
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD", re.IGNORECASE)
SECRET_KEYWORDS = frozenset({"access_token", "token", "client_secret", "refresh_token", "id_token"})
MIN_SECRET_LENGTH = 8
PATTERNS = {
    "JWT": re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\."),
    # a credential, not prose ("bearer token is not...", "bearer access_token"): 8+ characters of
    # token68, at least one a digit or one of . ~ + / = -
    "Bearer credential": re.compile(r"(?i)\bbearer\s+(?=[A-Za-z_]*[0-9.~+/=-])[A-Za-z0-9._~+/=-]{8,}"),
    "Authorization header": re.compile(r"(?i)\bauthorization\b['\"]?\s*[:=,]"),
}

_registered: set[str] = set()
_suspended = 0  # > 0 inside kept_out_of_session_log()


def register_secret(value: str) -> str:
    """Declare a token or secret a test uses: the run fails if any captured log line holds it."""
    if value:
        _registered.add(value)
    return value


# --- what to look for ------------------------------------------------------------------------


@dataclass(frozen=True)
class Needle:
    kind: str  # "patient name", "patient id", "patient identifier", "secret"
    value: str
    source: str


def patients_in(node: Any) -> Iterator[dict[str, Any]]:
    """Every Patient resource anywhere in a JSON/YAML document."""
    if isinstance(node, dict):
        if node.get("resourceType") == "Patient":
            yield node
        for value in node.values():
            yield from patients_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from patients_in(value)


def patient_needles(patient: dict[str, Any], source: str) -> Iterator[Needle]:
    if isinstance(patient.get("id"), str):
        yield Needle("patient id", patient["id"], source)
    for identifier in patient.get("identifier") or ():
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            yield Needle("patient identifier", identifier["value"], source)
    for name in patient.get("name") or ():
        if not isinstance(name, dict):
            continue
        parts = [*(name.get("given") or ()), name.get("family"), name.get("text")]
        for part in parts:
            if isinstance(part, str) and part.strip():
                yield Needle("patient name", part.strip(), source)


def _load(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def known_patient_needles() -> list[Needle]:
    found: dict[str, Needle] = {}
    for folder, pattern in PATIENT_SOURCES:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(pattern)):
            source = str(path.relative_to(REPO.parent))
            for patient in patients_in(_load(path)):
                for needle in patient_needles(patient, source):
                    found.setdefault(needle.value, needle)
    return list(found.values())


def convention_secrets(root: Path = REPO / "tests") -> list[Needle]:
    """String constants the test sources use as tokens or secrets (see the module docstring)."""
    found: list[Needle] = []
    for path in sorted(root.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except SyntaxError:
            continue
        source = str(path.relative_to(REPO))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
                if any(SECRET_NAME.search(n) for n in names):
                    found.extend(_secret(node.value, source))
            elif isinstance(node, ast.keyword) and node.arg in SECRET_KEYWORDS:
                found.extend(_secret(node.value, source))
    return found


def _secret(value: ast.expr | None, source: str) -> Iterator[Needle]:
    if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
        return
    if len(value.value) >= MIN_SECRET_LENGTH and not value.value.isspace():
        yield Needle("secret", value.value, source)


@cache
def _fixed_needles() -> tuple[Needle, ...]:
    return (*known_patient_needles(), *convention_secrets())


def needles() -> list[Needle]:
    registered = [Needle("secret", value, "register_secret()") for value in sorted(_registered)]
    return [*_fixed_needles(), *registered]


# --- the scan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    line_number: int
    kind: str
    value: str
    source: str
    line: str

    def __str__(self) -> str:
        return f"line {self.line_number}: {self.kind} {self.value!r} (from {self.source}): {self.line[:300]}"


def _token_pattern(values: Iterable[str]) -> re.Pattern[str] | None:
    """One regex for all needles: each must stand alone, not inside a longer word, id or number."""
    alternatives = sorted({re.escape(v) for v in values}, key=len, reverse=True)
    if not alternatives:
        return None
    return re.compile(r"(?<![A-Za-z0-9_])(?:" + "|".join(alternatives) + r")(?![A-Za-z0-9_])")


def scan(lines: Iterable[str], found_needles: Iterable[Needle] | None = None) -> list[Hit]:
    by_value = {n.value: n for n in (needles() if found_needles is None else found_needles)}
    pattern = _token_pattern(by_value)
    hits: list[Hit] = []
    for number, line in enumerate(lines, start=1):
        if pattern is not None:
            for match in pattern.finditer(line):
                needle = by_value[match.group(0)]
                hits.append(Hit(number, needle.kind, needle.value, needle.source, line.rstrip()))
        for kind, regex in PATTERNS.items():
            for match in regex.finditer(line):
                hits.append(Hit(number, kind, match.group(0), "pattern", line.rstrip()))
    return hits


# --- the capture -----------------------------------------------------------------------------


@contextmanager
def kept_out_of_session_log() -> Iterator[None]:
    """For a test that provokes a *known* leak on purpose (an xfail regression test): what is logged
    meanwhile, from any thread, is not written to the session log. Use nowhere else."""
    global _suspended
    _suspended += 1
    try:
        yield
    finally:
        _suspended -= 1


def in_scope(record: logging.LogRecord) -> bool:
    name = record.name
    if name == SERVICE_LOGGER or name.startswith(SERVICE_LOGGER + "."):
        return True
    top = name.split(".", 1)[0]
    return record.levelno >= THIRD_PARTY_LEVELS.get(top, THIRD_PARTY_DEFAULT)


class ServiceLogFile(logging.FileHandler):
    """Writes every in-scope record, formatted as the service would log it, with exception text.

    Append mode on a file truncated once: ``logging.config.dictConfig`` (uvicorn runs it when a
    test starts a server in-process) closes every handler, and a FileHandler in "w" mode then drops
    records silently, while one in "a" mode reopens its file on the next record.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("", encoding="utf-8")
        super().__init__(path, mode="a", encoding="utf-8", delay=True)
        self.setLevel(logging.DEBUG)
        self.addFilter(lambda record: not _suspended and in_scope(record))
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))


@dataclass
class _Session:
    path: Path
    handler: ServiceLogFile
    root_level: int
    hits: list[Hit] | None = None


_STATE = pytest.StashKey[_Session]()


def pytest_configure(config: pytest.Config) -> None:
    path = Path(os.environ.get("CDS_TEST_LOG") or DEFAULT_LOG)
    state = _Session(path=path, handler=ServiceLogFile(path), root_level=logging.getLogger().level)
    config.stash[_STATE] = state
    _attach(state)


def _attach(state: _Session) -> None:
    """(Re)attach the handler and the DEBUG level: a test may have reconfigured logging."""
    root = logging.getLogger()
    if state.handler not in root.handlers:
        root.addHandler(state.handler)
    if root.level != logging.DEBUG:
        root.setLevel(logging.DEBUG)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    state = item.config.stash.get(_STATE, None)
    if state is not None:
        _attach(state)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is None:
        return
    state.handler.flush()
    with state.path.open(encoding="utf-8") as log_file:
        state.hits = scan(log_file)
    if state.hits and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None or state.hits is None:
        return
    if not state.hits:
        terminalreporter.write_line(f"test logs: no patient data or secrets in {state.path}")
        return
    terminalreporter.section("PHI in test logs", sep="=", red=True, bold=True)
    terminalreporter.write_line(f"{len(state.hits)} hit(s) in {state.path}; the run fails:", red=True)
    for hit in state.hits[:50]:
        terminalreporter.write_line(f"  {hit}")


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    root = logging.getLogger()
    root.removeHandler(state.handler)
    root.setLevel(state.root_level)
    state.handler.close()
