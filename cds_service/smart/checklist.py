"""The reviewer's checklist, saved per user, patient, trial and criterion (table ``smart_checklist``).

A trial's manual criteria need a human ("no pregnancy planned", "consents to contraception"); the
reviewer ticks them, with a short note if useful, and finds them ticked when opening the same
patient again. Rows are keyed by keyed pseudonyms (``ops.audit.Pseudonyms``: HMAC-SHA256 under
``CDS_PSEUDONYM_KEY``) of the user — the id_token's ``iss`` + ``sub`` (``smart.identity``) — and of
the patient id, so a copy of the database names nobody; the notes, free text a clinician typed,
are encrypted at rest like the session tokens (``sealing``), bound to their row.

Without a user (the EHR sent no id_token) the owner is the launch itself: the checklist survives
reloads and evidence views, and is deleted with the launch. A user's rows are kept for
``RETENTION_DAYS`` after their last change. Saving replaces the trial's rows in one transaction.

The form is parsed here (``parse_form``), strictly: an unknown criterion, a note over
``MAX_NOTE`` characters or a field too many is a 400 page, never data silently dropped.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from sqlalchemy import Boolean, Column, Engine, Float, MetaData, String, Table, Text, and_, delete, select

from cds_service.smart import errors
from cds_service.smart.sealing import Sealer

RETENTION_DAYS = 365
MAX_NOTE = 200
MAX_FORM_BYTES = 32_768
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")  # reorder what is shown
_metadata = MetaData()

checklist_table = Table(
    "smart_checklist",
    _metadata,
    Column("owner_key", String(64), primary_key=True),  # user pseudonym, or the launch's hashed id
    Column("patient_key", String(64), primary_key=True),
    Column("trial", String(64), primary_key=True),
    Column("criterion", String(100), primary_key=True),
    Column("checked", Boolean, nullable=False),
    Column("note", Text),  # sealed
    Column("updated_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
)


@dataclass(frozen=True)
class Item:
    checked: bool
    note: str = ""


@dataclass(frozen=True)
class Owner:
    """Whose checklist: a user's (kept) or one launch's (until it expires)."""

    key: str
    expires_at: float
    per_user: bool


@dataclass(frozen=True)
class Submission:
    context_id: str
    token: str
    trial: str
    items: dict[str, Item]


class ChecklistStore:
    def __init__(self, engine: Engine, *, sealer: Sealer, clock: Callable[[], float] = time.time) -> None:
        self.engine, self.sealer, self.clock = engine, sealer, clock
        _metadata.create_all(engine)

    def user_owner(self, user_key: str) -> Owner:
        return Owner(user_key, self.clock() + RETENTION_DAYS * 86400, per_user=True)

    def load(self, owner: Owner, patient_key: str, trials: Iterable[str]) -> dict[str, dict[str, Item]]:
        """trial → criterion → what was saved (only ticked or annotated criteria have rows)."""
        wanted = list(trials)
        query = select(checklist_table).where(
            checklist_table.c.owner_key == owner.key,
            checklist_table.c.patient_key == patient_key,
            checklist_table.c.trial.in_(wanted),
            checklist_table.c.expires_at > self.clock(),
        )
        found: dict[str, dict[str, Item]] = {t: {} for t in wanted}
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                where = _row(owner.key, patient_key, row.trial, row.criterion)
                note = self.sealer.open(row.note, row=where) if row.note else None
                found[row.trial][row.criterion] = Item(bool(row.checked), note or "")
        return found

    def save(self, owner: Owner, patient_key: str, trial: str, items: Mapping[str, Item]) -> None:
        """Replace the trial's checklist for this owner and patient."""
        now = self.clock()
        mine = and_(
            checklist_table.c.owner_key == owner.key,
            checklist_table.c.patient_key == patient_key,
            checklist_table.c.trial == trial,
        )
        rows = [
            {
                "owner_key": owner.key,
                "patient_key": patient_key,
                "trial": trial,
                "criterion": criterion,
                "checked": item.checked,
                "note": self.sealer.seal(item.note, row=_row(owner.key, patient_key, trial, criterion))
                if item.note
                else None,
                "updated_at": now,
                "expires_at": owner.expires_at,
            }
            for criterion, item in items.items()
            if item.checked or item.note
        ]
        with self.engine.begin() as conn:
            conn.execute(delete(checklist_table).where(checklist_table.c.expires_at <= now))
            conn.execute(delete(checklist_table).where(mine))
            if rows:
                conn.execute(checklist_table.insert(), rows)

    def cleanup(self) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(delete(checklist_table).where(checklist_table.c.expires_at <= self.clock()))
        return result.rowcount or 0


def _row(owner: str, patient: str, trial: str, criterion: str) -> str:
    return f"{owner}|{patient}|{trial}|{criterion}"


def parse_form(body: bytes, *, criteria_of: Callable[[str], set[str] | None]) -> Submission:
    """The POSTed checklist: ``ctx``, ``csrf``, ``trial``, ``done`` (repeated), ``note-<criterion>``.

    ``criteria_of(trial)`` names the trial's manual criteria, or None for a trial the app does not
    show; anything else in the form is refused."""
    if len(body) > MAX_FORM_BYTES:
        raise errors.bad_form("the form is too large")
    try:
        fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise errors.bad_form("the form could not be read") from None
    single: dict[str, str] = {}
    done: set[str] = set()
    notes: dict[str, str] = {}
    for name, value in fields:
        if name == "done":
            done.add(value)
        elif name.startswith("note-"):
            notes[name.removeprefix("note-")] = _clean_note(value)
        elif name in ("ctx", "csrf", "trial") and name not in single:
            single[name] = value
        else:
            raise errors.bad_form("the form has a field it should not have")
    if set(single) != {"ctx", "csrf", "trial"}:
        raise errors.bad_form("the form is incomplete")
    allowed = criteria_of(single["trial"])
    if allowed is None:
        raise errors.bad_form("the form names a trial this page does not show")
    if not (done | set(notes)) <= allowed:
        raise errors.bad_form("the form names a criterion that is not on the trial's checklist")
    items = {c: Item(c in done, notes.get(c, "")) for c in sorted(done | set(notes))}
    return Submission(single["ctx"], single["csrf"], single["trial"], items)


def _clean_note(value: str) -> str:
    """One line of text: control characters refused rather than stored; at most MAX_NOTE characters."""
    note = " ".join(value.split())
    if any(unicodedata.category(ch) in ("Cc", "Co", "Cs") or ch in _BIDI for ch in note):
        raise errors.bad_form("a note holds control characters")
    if len(note) > MAX_NOTE:
        raise errors.bad_form(f"a note is longer than {MAX_NOTE} characters")
    return note
