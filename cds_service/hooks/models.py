"""Wire models mirroring CDS Hooks 2.0.1 field for field, with the spec's limits enforced here.

Sections of ``shared/reference/cds-hooks-2.0.1.md``: Discovery (Response), Calling a CDS Service
(HTTP Request, FHIR Resource Access), CDS Service Response (Card Attributes, Source, Link), Feedback.
Responses are serialised with ``exclude_none`` and every optional list is omitted when empty,
because the spec forbids nulls and an EHR may choke on them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cds_service.fhir.ids import is_fhir_id


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Incoming(BaseModel):
    """Requests from EHRs: unknown fields (``extension``, newer spec versions) are tolerated."""

    model_config = ConfigDict(extra="allow")


# --- Discovery -------------------------------------------------------------------------------


class ServiceDefinition(_Wire):
    hook: str
    title: str | None = None
    description: str
    id: str
    prefetch: dict[str, str] | None = None
    usageRequirements: str | None = None


class DiscoveryResponse(_Wire):
    services: list[ServiceDefinition]


# --- Request ---------------------------------------------------------------------------------


class FhirAuthorization(_Incoming):
    access_token: str = Field(min_length=1)
    token_type: str
    expires_in: int
    scope: str
    subject: str
    patient: str | None = None

    def __repr__(self) -> str:  # never let a token reach a log line through repr()
        return f"FhirAuthorization(subject={self.subject!r}, scope={self.scope!r}, access_token=***)"

    __str__ = __repr__


class PatientViewContext(_Incoming):
    userId: str = Field(min_length=1, max_length=256)
    patientId: str = Field(min_length=1, pattern=r"^[A-Za-z0-9\-.]{1,64}$")
    encounterId: str | None = None

    @field_validator("patientId")
    @classmethod
    def _not_a_dot_segment(cls, value: str) -> str:
        """'.' and '..' fit the id pattern but would turn ``Patient/{id}`` into a search of all."""
        if not is_fhir_id(value):
            raise ValueError("must be a FHIR id, not only dots")
        return value


class HookRequest(_Incoming):
    """The envelope of a hook call. ``prefetch`` values are read leniently by the prefetch layer."""

    hook: Literal["patient-view"]
    hookInstance: str = Field(min_length=1, max_length=200)
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: PatientViewContext
    prefetch: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _server_with_token(self) -> HookRequest:
        if self.fhirAuthorization is not None and not self.fhirServer:
            raise ValueError("fhirServer is required when fhirAuthorization is given")
        return self


# --- Response --------------------------------------------------------------------------------


class Indicator(StrEnum):
    info = "info"
    warning = "warning"
    critical = "critical"


class Coding(_Wire):
    code: str = Field(min_length=1)
    system: str | None = None
    display: str | None = None


class OverrideReasonCoding(Coding):
    display: str = Field(min_length=1)  # "the CDS Service MUST populate a display value"


class Source(_Wire):
    label: str = Field(min_length=1)
    url: str | None = Field(default=None, pattern=r"^https?://")
    icon: str | None = None
    topic: Coding | None = None


class Link(_Wire):
    label: str = Field(min_length=1)
    url: str = Field(min_length=1)
    type: Literal["absolute", "smart"]
    appContext: str | None = None
    autolaunchable: bool | None = None

    @model_validator(mode="after")
    def _app_context_only_for_smart(self) -> Link:
        if self.appContext is not None and self.type != "smart":
            raise ValueError("appContext is only valid on smart links")
        if self.type == "absolute" and not self.url.startswith(("https://", "http://")):
            raise ValueError("an absolute link needs an absolute URL")
        return self


class Action(_Wire):
    """A suggested change (spec: Card Attributes › Action): ``resource`` for create/update."""

    type: Literal["create", "update", "delete"]
    description: str = Field(min_length=1)
    resource: dict[str, Any] | None = None
    resourceId: str | None = None

    @model_validator(mode="after")
    def _what_to_change(self) -> Action:
        if self.type in ("create", "update") and not isinstance(self.resource, dict):
            raise ValueError(f"a {self.type} action needs a FHIR resource")
        if self.type == "create" and self.resource is not None and "resourceType" not in self.resource:
            raise ValueError("a create action's resource needs a resourceType")
        if self.type == "delete" and not self.resourceId:
            raise ValueError("a delete action needs resourceId")
        return self


class Suggestion(_Wire):
    """A set of actions the clinician may accept (spec: Card Attributes › Suggestion)."""

    label: str = Field(min_length=1)
    uuid: str | None = None
    isRecommended: bool | None = None
    actions: list[Action] | None = None


class Card(_Wire):
    uuid: str | None = None
    summary: str = Field(min_length=1, max_length=139)  # "<140-character"
    detail: str | None = None
    indicator: Indicator
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[OverrideReasonCoding] | None = None
    links: list[Link] | None = None
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _suggestions_need_selection_behavior(self) -> Card:
        if self.suggestions and self.selectionBehavior is None:
            raise ValueError("a card with suggestions must say its selectionBehavior")
        return self


class HookResponse(_Wire):
    cards: list[Card]


# --- Feedback --------------------------------------------------------------------------------


class AcceptedSuggestion(_Incoming):
    id: str = Field(min_length=1)


class OverrideReason(_Incoming):
    reason: Coding | None = None
    userComment: str | None = Field(default=None, max_length=2000)


class FeedbackItem(_Incoming):
    card: str = Field(min_length=1, max_length=200)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")

    @field_validator("outcomeTimestamp")
    @classmethod
    def _a_real_instant(cls, value: str) -> str:
        """The pattern admits '0000-00-00T00:00:00Z': the timestamp must also be a real instant."""
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("outcomeTimestamp is not a valid date and time") from None
        return value

    def moment(self) -> datetime:
        return datetime.fromisoformat(self.outcomeTimestamp.replace("Z", "+00:00"))

    @model_validator(mode="after")
    def _accepted_needs_suggestions(self) -> FeedbackItem:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is required for accepted outcomes")
        return self


class FeedbackRequest(_Incoming):
    feedback: list[FeedbackItem] = Field(min_length=1, max_length=100)
