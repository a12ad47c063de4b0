"""Eligibility report → CDS Hooks cards: few, calm, read in seconds, each with a next step.

One card per trial the site offers to clinicians that is likely eligible or needs review (not
eligible ones only by setting), at most the portfolio's ``max_cards``, ordered by status and by how
little is left to review. The summary names trial and status in plain words; the detail is a few
lines — what makes the patient a candidate, the top items left to review and their count, the study
contact, the mapping version — and the full checklist lives in the SMART app. Each card suggests a
referral to the study team (a draft ServiceRequest the EHR asks the clinician to confirm) and
carries the report as an extension.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import date

from cds_service.codes import SNOMED
from cds_service.engine.model import Criterion, Trial
from cds_service.engine.report import CriterionResult, Evidence, TrialResult
from cds_service.hooks.models import Action, Card, Indicator, Link, OverrideReasonCoding, Source, Suggestion
from cds_service.portfolio import Portfolio, TrialOffer
from cds_service.vocabulary import STATUS_WORDS, group_of, label_of

EXTENSION_KEY = "org.cds-service.trial-eligibility"
OVERRIDE_SYSTEM = "urn:cds-service:override-reason"
OVERRIDE_REASONS = (
    ("not-interested", "Patient not interested"),
    ("already-screened", "Already screened for this trial"),
    ("not-eligible", "Not eligible (clinical judgement)"),
    ("data-incorrect", "Patient data shown is incorrect"),
)
REFERRAL_LABEL = "Refer to the study team"
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]<>|~#])")  # what could become a link, markup or HTML
_STATUS_ORDER = {"likely-eligible": 0, "needs-review": 1, "not-eligible": 2}
_RECRUITING_ORDER = {"recruiting": 0, "not-yet-recruiting": 1}
TOP_ITEMS = 3
_CODE_SUFFIX = re.compile(r"\s*\((?:SNOMED|ICD-10-CM|ICD-10|LOINC|RxNorm|CVX|CPT|HCPCS|NDC|ATC|code) [^)]*\)")


@dataclass(frozen=True)
class CardContext:
    """What every card of one hook call shares."""

    trials: dict[str, Trial]
    portfolio: Portfolio
    smart_launch_url: str
    patient_id: str
    user_id: str | None
    today: date


def render_cards(results: list[TrialResult], *, context: CardContext, show_not_eligible: bool) -> list[Card]:
    """The cards a clinician sees: offered trials only, capped, best candidates first."""
    offered = set(context.portfolio.for_clinicians())
    shown = [r for r in results if r.trial in offered and (r.status != "not-eligible" or show_not_eligible)]
    shown.sort(key=lambda r: card_order(r, context.portfolio.offer(r.trial)))
    cap = context.portfolio.max_cards
    cards = [render_card(result, context=context) for result in shown[:cap]]
    if len(shown) > cap:
        more = len(shown) - cap
        last = cards[-1]
        note = f"\n\n{more} more trial{'s' if more > 1 else ''} may fit: see the app."
        cards[-1] = last.model_copy(update={"detail": (last.detail or "") + note})
    return cards


def card_order(result: TrialResult, offer: TrialOffer | None) -> tuple[int, int, int, int, str]:
    """Likely eligible first; then fewest data items to review, fewest manual ones; recruiting first."""
    review = [c for c in result.criteria if c.result == "unknown"]
    data_items = sum(1 for c in review if not c.manual)
    recruiting = _RECRUITING_ORDER.get(offer.status if offer else "recruiting", 2)
    return (_STATUS_ORDER[result.status], data_items, len(review) - data_items, recruiting, result.trial)


def render_card(result: TrialResult, *, context: CardContext) -> Card:
    trial = context.trials[result.trial]
    offer = context.portfolio.offer(result.trial)
    card_id = str(uuid.uuid4())
    return Card(
        uuid=card_id,
        summary=summary(result, trial=trial),
        detail=detail(result, trial=trial, offer=offer),
        indicator=Indicator.info,
        source=Source(label=f"ClinicalTrials.gov {trial.trial}", url=trial.url),
        suggestions=[referral(result, trial=trial, offer=offer, context=context, card_id=card_id)],
        selectionBehavior="at-most-one",
        overrideReasons=[
            OverrideReasonCoding(system=OVERRIDE_SYSTEM, code=code, display=display)
            for code, display in OVERRIDE_REASONS
        ],
        links=[
            Link(
                label=f"Full eligibility checklist ({trial.trial})",
                url=context.smart_launch_url,
                type="smart",
                appContext=json.dumps({"trial": trial.trial}, separators=(",", ":")),
            ),
            Link(label=f"{trial.trial} on ClinicalTrials.gov", url=trial.url, type="absolute"),
        ],
        extension={EXTENSION_KEY: extension(result)},
    )


def summary(result: TrialResult, *, trial: Trial) -> str:
    """'Likely eligible: CC312 in SLE (NCT06888960)', under 140 characters, no internal ids."""
    name = f"{trial.short_title} ({trial.trial})"
    words = STATUS_WORDS[result.status]
    review = [c for c in result.criteria if c.result == "unknown"]
    if result.status == "needs-review":
        text = f"{words}: {name} – {len(review)} item{'' if len(review) == 1 else 's'} to check"
    elif result.status == "not-eligible":
        failing = next((c for c in result.criteria if group_of(c) == "rules-out"), None)
        why = label_of(_criterion(trial, failing.id)) if failing else "patient deceased"
        text = f"{words}: {name} – {why}"
    else:
        text = f"{words}: {name}"
    return text if len(text) < 140 else text[:136] + "…"


def detail(result: TrialResult, *, trial: Trial, offer: TrialOffer | None) -> str:
    """A few lines: why a candidate, what is left to review, who to contact, which mapping."""
    lines = []
    meets = sorted((c for c in result.criteria if group_of(c) == "meets"), key=_clinical_first)
    out = [c for c in result.criteria if group_of(c) == "rules-out"]
    review = sorted((c for c in result.criteria if c.result == "unknown"), key=lambda c: c.manual)
    if out:
        lines.append("**Rules the patient out:** " + _items(out, trial, with_reason=True))
    elif meets:
        lines.append("**Candidate because:** " + _items(meets, trial, with_reason=False))
    if review:
        lines.append(f"**To review ({len(review)}):** " + _items(review, trial, with_reason=not out))
    contact = offer.contact.line() if offer and offer.contact else "see the trial's registry page"
    lines.append(f"**Study team:** {_escape(contact)}")
    lines.append(
        f"Mapping v{_escape(trial.version)} ({trial.effective.isoformat()}); full checklist in the app."
    )
    return "\n\n".join(lines)


def _items(results: list[CriterionResult], trial: Trial, *, with_reason: bool) -> str:
    shown = []
    for result in results[:TOP_ITEMS]:
        label = label_of(_criterion(trial, result.id))
        extra = _evidence_text(result.evidence[0]) if result.evidence and not with_reason else ""
        if with_reason and not result.manual:
            extra = _shorten(result.reason, 70)
        shown.append(_escape(f"{label} ({extra})" if extra else label))
    more = len(results) - TOP_ITEMS
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def _clinical_first(result: CriterionResult) -> int:
    """What the record shows clinically (a diagnosis, a result, a drug) before demographics."""
    return 0 if any(not e.reference.startswith("Patient/") for e in result.evidence) else 1


def _criterion(trial: Trial, criterion_id: str) -> Criterion:
    return next(c for c in trial.criteria if c.id == criterion_id)


def _evidence_text(item: Evidence) -> str:
    value = _shorten(_CODE_SUFFIX.sub("", item.value or ""), 40)
    if item.date and item.date not in value:
        return f"{value}, {item.date}" if value else item.date
    return value


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _escape(text: str) -> str:
    """EHR-supplied text must not become links or markup inside the card."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def referral(
    result: TrialResult, *, trial: Trial, offer: TrialOffer | None, context: CardContext, card_id: str
) -> Suggestion:
    """'Refer to the study team': a draft referral the EHR shows the clinician to confirm and sign."""
    contact = offer.contact.line() if offer and offer.contact else None
    status = STATUS_WORDS[result.status].lower()
    note = f"Possible eligibility ({status}) for {trial.trial} ({trial.short_title}), trial mapping"
    note += f" v{trial.version}; the study team confirms eligibility."
    if contact:
        note += f" Study team: {contact}."
    request: dict[str, object] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{context.patient_id}"},
        "code": {
            "coding": [{"system": SNOMED, "code": "3457005", "display": "Patient referral"}],
            "text": f"Referral to the study team of {trial.trial}",
        },
        "reasonCode": [{"text": f"Possible eligibility for clinical trial {trial.trial}"}],
        "authoredOn": context.today.isoformat(),
        "note": [{"text": note}],
    }
    if context.user_id and re.fullmatch(
        r"(Practitioner|PractitionerRole)/[A-Za-z0-9\-.]{1,64}", context.user_id
    ):
        request["requester"] = {"reference": context.user_id}
    action = Action(
        type="create",
        description=f"Refer the patient to the {trial.short_title} study team",
        resource=request,
    )
    return Suggestion(label=REFERRAL_LABEL, uuid=f"{card_id}-refer", isRecommended=True, actions=[action])


def extension(result: TrialResult) -> dict[str, object]:
    """The report for this trial, with no null and no empty values (empty evidence is omitted)."""
    criteria = []
    for item in result.model_dump(mode="json", exclude_none=True)["criteria"]:
        if not item.get("evidence"):
            item.pop("evidence", None)
        criteria.append(item)
    return {
        "trial": result.trial,
        "version": result.version,
        "effective": result.effective,
        "status": result.status,
        "criteria": criteria,
    }
