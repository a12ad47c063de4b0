"""Eligibility report → CDS Hooks cards: few, calm, and each line traceable to its evidence.

One card per trial that is likely-eligible or needs review (not-eligible ones only by setting).
The summary names the trial and the status; the markdown detail lists what was met and what needs
review, with the evidence; the extension carries the same report the CLI prints.
"""

from __future__ import annotations

import json
import re
import uuid

from cds_service.engine.model import Criterion, Trial
from cds_service.engine.report import CriterionResult, Evidence, TrialResult
from cds_service.hooks.models import Card, Indicator, Link, OverrideReasonCoding, Source

EXTENSION_KEY = "org.cds-service.trial-eligibility"
OVERRIDE_SYSTEM = "urn:cds-service:override-reason"
OVERRIDE_REASONS = (
    ("not-interested", "Patient not interested"),
    ("already-screened", "Already screened for this trial"),
    ("not-appropriate", "Not clinically appropriate"),
    ("data-incorrect", "Patient data shown is incorrect"),
)
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]<>|~])")  # what could become a link, markup or HTML
_PASSING = {"inclusion": "met", "exclusion": "not-met"}


def render_cards(
    results: list[TrialResult],
    *,
    trials: dict[str, Trial],
    smart_launch_url: str,
    show_not_eligible: bool,
) -> list[Card]:
    cards = []
    for result in results:
        if result.status == "not-eligible" and not show_not_eligible:
            continue
        cards.append(render_card(result, trial=trials[result.trial], smart_launch_url=smart_launch_url))
    return cards


def render_card(result: TrialResult, *, trial: Trial, smart_launch_url: str) -> Card:
    return Card(
        uuid=str(uuid.uuid4()),
        summary=summary(result, trial=trial),
        detail=detail(result, trial=trial),
        indicator=Indicator.info,
        source=Source(label=f"ClinicalTrials.gov {trial.trial}", url=trial.url),
        overrideReasons=[
            OverrideReasonCoding(system=OVERRIDE_SYSTEM, code=code, display=display)
            for code, display in OVERRIDE_REASONS
        ],
        links=[
            Link(
                label=f"Eligibility details for {trial.trial}",
                url=smart_launch_url,
                type="smart",
                appContext=json.dumps({"trial": trial.trial}, separators=(",", ":")),
            ),
            Link(label=f"{trial.trial} on ClinicalTrials.gov", url=trial.url, type="absolute"),
        ],
        extension={EXTENSION_KEY: extension(result)},
    )


def summary(result: TrialResult, *, trial: Trial) -> str:
    """'Possible candidate: NCT06888960 (CC312 in SLE) – 3 items to review', under 140 characters."""
    review = [c for c in result.criteria if c.result == "unknown"]
    name = f"{trial.trial} ({trial.short_title})"
    items = f"{len(review)} item{'' if len(review) == 1 else 's'} to review"
    if result.status == "likely-eligible":
        text = f"Likely eligible: {name} – {items}" if review else f"Likely eligible: {name}"
    elif result.status == "needs-review":
        text = f"Possible candidate: {name} – {items}"
    else:
        failing = next(
            (c.id for c in result.criteria if c.result != _PASSING[c.kind] and c.result != "unknown"),
            "patient status",
        )
        text = f"Not eligible: {name} – {failing}"
    return text if len(text) < 140 else text[:136] + "…"


def detail(result: TrialResult, *, trial: Trial) -> str:
    texts = {c.id: c for c in trial.criteria}
    passed = [c for c in result.criteria if c.result == _PASSING[c.kind]]
    review = [c for c in result.criteria if c.result == "unknown"]
    failed = [c for c in result.criteria if c.result not in (_PASSING[c.kind], "unknown")]
    lines = [f"**{_escape(trial.title)}** — status: **{result.status}**", ""]
    groups = (("To review", review), ("Rules the patient out", failed), ("In the patient's favour", passed))
    for heading, group in groups:
        if group:
            lines.append(f"**{heading}** ({len(group)})")
            lines.extend(_line(c, texts[c.id]) for c in group)
            lines.append("")
    return "\n".join(lines).strip()


_STATES = {
    ("inclusion", "met"): "Inclusion met",
    ("inclusion", "not-met"): "Inclusion not met",
    ("inclusion", "unknown"): "Inclusion",
    ("exclusion", "met"): "Exclusion present",
    ("exclusion", "not-met"): "Exclusion absent",
    ("exclusion", "unknown"): "Exclusion",
}


def _line(result: CriterionResult, criterion: Criterion) -> str:
    kind = _STATES[(result.kind, result.result)]
    manual = " (manual)" if result.manual else ""
    proof = "; ".join(_evidence_text(e) for e in result.evidence[:3])
    more = f" (+{len(result.evidence) - 3} more)" if len(result.evidence) > 3 else ""
    evidence = f" — evidence: {proof}{more}" if proof else ""
    text = _escape(_shorten(criterion.text, 90))
    return f"- {kind}{manual}: {text} — *{_escape(result.reason)}*{evidence}"


def _evidence_text(item: Evidence) -> str:
    bits = [item.reference]
    if item.value:
        bits.append(item.value)
    if item.date and item.date not in (item.value or ""):
        bits.append(item.date)
    return _escape(", ".join(bits))


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _escape(text: str) -> str:
    """EHR-supplied text must not become links or markup inside the card."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def extension(result: TrialResult) -> dict[str, object]:
    """The report for this trial, with no null and no empty values (empty evidence is omitted)."""
    criteria = []
    for item in result.model_dump(mode="json", exclude_none=True)["criteria"]:
        if not item.get("evidence"):
            item.pop("evidence", None)
        criteria.append(item)
    return {"trial": result.trial, "status": result.status, "criteria": criteria}
