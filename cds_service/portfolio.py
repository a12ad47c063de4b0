"""A site's portfolio: which trials are offered here, how, and by whom.

A mapping says what a trial *means*; the site says whether and how it is *offered*: its recruiting
status at this site, the study contact shown on cards and in the app, whether clinicians see cards
for it or only the study team does (in the pre-screening worklist), how many cards a chart open may
show, and how long a card stays hidden after a clinician dismisses it for a given reason. It is
site configuration (``CDS_PORTFOLIO``, a YAML file), validated against the loaded mappings when the
service starts; without a file every loaded trial is offered, recruiting, to clinicians.

```yaml
site: Example University Hospital
max_cards: 3
snooze_days: {not-interested: 180, already-screened: 90, not-eligible: 365}
trials:
  - trial: NCT06888960
    status: recruiting     # recruiting | not-yet-recruiting | active-not-recruiting | suspended | closed
    audience: clinicians   # clinicians | study-team
    contact: {name: "A. Example", role: "Study coordinator", phone: "+1 555 0100",
              email: "lupus-trials@example.org"}
```
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from cds_service.engine.loader import Catalog, _validate, read_data
from cds_service.engine.model import Strict
from cds_service.errors import MappingError

RecruitingStatus = Literal["recruiting", "not-yet-recruiting", "active-not-recruiting", "suspended", "closed"]
OFFERED: frozenset[str] = frozenset({"recruiting", "not-yet-recruiting"})  # others: no cards, no worklist
DEFAULT_SNOOZE_DAYS: dict[str, int] = {"not-interested": 180, "already-screened": 90, "not-eligible": 365}


class Contact(Strict):
    """Who a clinician reaches about the trial: shown on the card and in the app."""

    name: str = Field(min_length=1, max_length=100)
    role: str | None = Field(default=None, max_length=60)
    phone: str | None = Field(default=None, max_length=40, pattern=r"^[0-9+()\-. x]+$")
    email: str | None = Field(default=None, max_length=120, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    url: str | None = Field(default=None, pattern=r"^https://")

    def line(self) -> str:
        """'A. Example (Study coordinator) · +1 555 0100 · lupus-trials@example.org'"""
        who = f"{self.name} ({self.role})" if self.role else self.name
        return " · ".join(p for p in (who, self.phone, self.email, self.url) if p)


class TrialOffer(Strict):
    trial: str = Field(description="a trial id the mappings define")
    status: RecruitingStatus = "recruiting"
    audience: Literal["clinicians", "study-team"] = Field(
        default="clinicians", description="clinicians see cards; study-team: the worklist only"
    )
    contact: Contact | None = None


class PortfolioFile(Strict):
    site: str | None = None
    max_cards: int = Field(default=3, ge=1, le=20, description="most cards one chart open shows")
    snooze_days: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_SNOOZE_DAYS), description="days a dismissed card stays hidden"
    )
    trials: list[TrialOffer] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> PortfolioFile:
        ids = [t.trial for t in self.trials]
        duplicates = sorted({t for t in ids if ids.count(t) > 1})
        if duplicates:
            raise ValueError(f"trial listed twice: {', '.join(duplicates)}")
        unknown = sorted(set(self.snooze_days) - set(DEFAULT_SNOOZE_DAYS))
        if unknown:
            raise ValueError(f"snooze_days: unknown reason {unknown} (use {sorted(DEFAULT_SNOOZE_DAYS)})")
        if any(days < 0 or days > 3650 for days in self.snooze_days.values()):
            raise ValueError("snooze_days must be between 0 and 3650")
        return self


@dataclass(frozen=True)
class Portfolio:
    """The validated portfolio, keyed by trial id."""

    site: str | None
    max_cards: int
    snooze_days: Mapping[str, int]
    offers: Mapping[str, TrialOffer]

    def offer(self, trial_id: str) -> TrialOffer | None:
        return self.offers.get(trial_id)

    def evaluated(self) -> list[str]:
        """Trials this site evaluates at all (offered: recruiting or about to)."""
        return [t for t, o in self.offers.items() if o.status in OFFERED]

    def for_clinicians(self) -> list[str]:
        """Trials whose cards clinicians see at chart open."""
        return [t for t in self.evaluated() if self.offers[t].audience == "clinicians"]


def default_portfolio(catalog: Catalog) -> Portfolio:
    """Every loaded trial, recruiting, offered to clinicians, with no contact configured."""
    offers = {t: TrialOffer(trial=t) for t in catalog.trials}
    return Portfolio(site=None, max_cards=3, snooze_days=dict(DEFAULT_SNOOZE_DAYS), offers=offers)


def load_portfolio(path: Path | None, catalog: Catalog) -> Portfolio:
    """The site's portfolio file, checked against the mappings; MappingError names what is wrong."""
    if path is None:
        return default_portfolio(catalog)
    data: PortfolioFile = _validate(PortfolioFile, read_data(path), path)
    unknown = [t.trial for t in data.trials if t.trial not in catalog.trials]
    if unknown:
        known = ", ".join(sorted(catalog.trials))
        raise MappingError(f"{path}: trials: no mapping for {', '.join(unknown)} (mappings define: {known})")
    return Portfolio(
        site=data.site,
        max_cards=data.max_cards,
        snooze_days={**DEFAULT_SNOOZE_DAYS, **data.snooze_days},
        offers={t.trial: t for t in data.trials},
    )
