"""What can go wrong in a SMART launch, as pages a user can act on.

Every branch below ends in one HTML page with its own HTTP status, a plain title, what happened and
what to do next. Messages never carry tokens, codes or patient data; the detail goes to the log::

    SmartError (CdsServiceError)          status  title
    ├── launch_without_iss                  400   the app must be opened from the EHR
    ├── iss_not_allowed                     403   this EHR is not configured
    ├── discovery_failed                    502   the EHR's SMART configuration could not be read
    ├── authorization_denied                403   access was not granted
    ├── bad_state                           400   the sign-in link is no longer valid
    ├── session_expired                     401   the session expired
    ├── token_failed                        502   the EHR's sign-in service failed
    ├── fhir_access_expired                 401   the EHR no longer accepts our access
    ├── fhir_unreachable                    502   the EHR's FHIR server did not answer
    ├── authorization_failed                400   the authorize step answered another error
    ├── patient_not_available               403   the patient is not available to the app
    ├── unusable_data                       502   the record is not valid FHIR R4
    ├── bad_reference                       400   an evidence link that names no readable entry
    ├── evidence_not_found                  404   the EHR has no such entry (any more)
    ├── evidence_not_available              403   the EHR does not let the app read that entry
    ├── evidence_other_patient              403   the entry is not about the launch's patient
    ├── bad_form                            400   a checklist form the app did not make
    ├── form_expired                        403   a checklist form without this launch's CSRF token
    └── unexpected                          500   anything else (logged without detail)

These are factories of one class rather than subclasses: the router only needs status and text.
"""

from __future__ import annotations

from cds_service.errors import CdsServiceError

RELAUNCH = "Open the app again from the patient's chart in the EHR."


class SmartError(CdsServiceError):
    """A failure shown to the user as a page (status, title, what happened, what to do)."""

    def __init__(self, *, status: int, title: str, message: str, action: str = RELAUNCH) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.message = message
        self.action = action


def launch_without_iss() -> SmartError:
    return SmartError(
        status=400,
        title="Open this app from the EHR",
        message="The launch did not say which EHR (FHIR server) to connect to: "
        "the 'iss' parameter is missing.",
    )


def iss_not_allowed() -> SmartError:
    return SmartError(
        status=403,
        title="This EHR is not configured for the app",
        message="The EHR that launched the app is not on this service's list of allowed FHIR servers.",
        action="Ask the administrator of this service to add the EHR's FHIR server "
        "to CDS_SMART_ISS_ALLOWLIST.",
    )


def discovery_failed() -> SmartError:
    return SmartError(
        status=502,
        title="The EHR's SMART configuration could not be read",
        message="The EHR did not publish a usable .well-known/smart-configuration "
        "(unreachable, not JSON, missing endpoints, or endpoints that are not https).",
        action="Try again in a moment; if it keeps failing, tell the EHR team.",
    )


def authorization_denied() -> SmartError:
    return SmartError(
        status=403,
        title="Access was not granted",
        message="The EHR did not authorize the app to read this patient's record.",
        action="Open the app again from the EHR and approve access, or ask the EHR team for access.",
    )


def authorization_failed() -> SmartError:
    return SmartError(
        status=400,
        title="The EHR refused the sign-in request",
        message="The EHR's authorization server answered with an error instead of an authorization code.",
    )


def bad_state() -> SmartError:
    return SmartError(
        status=400,
        title="This sign-in link is no longer valid",
        message="The answer from the EHR does not belong to a launch started in this browser, "
        "or that launch is too old.",
    )


def session_expired() -> SmartError:
    return SmartError(
        status=401,
        title="Your session has expired",
        message="There is no active session for this page in this browser (it expired or was never started).",
    )


def token_failed() -> SmartError:
    return SmartError(
        status=502,
        title="The EHR's sign-in service failed",
        message="The EHR's token endpoint did not answer, or refused to exchange the authorization code.",
    )


def fhir_access_expired() -> SmartError:
    return SmartError(
        status=401,
        title="Access to the record has expired",
        message="The EHR no longer accepts this app's access to the patient record.",
    )


def fhir_unreachable() -> SmartError:
    return SmartError(
        status=502,
        title="The EHR's FHIR server did not answer",
        message="The patient record could not be read: the FHIR server was unreachable, too slow, "
        "or answered with an error.",
        action="Try again in a moment (reload the page); if it keeps failing, tell the EHR team.",
    )


def patient_not_available() -> SmartError:
    return SmartError(
        status=403,
        title="This patient is not available to the app",
        message="The EHR's FHIR server does not give this app access to the patient of the launch.",
        action="Open the app from the chart of a patient you have access to, or ask the EHR team.",
    )


def unexpected() -> SmartError:
    return SmartError(
        status=500,
        title="Something went wrong",
        message="The app hit an unexpected error. It has been logged, without patient data.",
        action="Reload the page; if it keeps failing, open the app again from the EHR.",
    )


def unusable_data() -> SmartError:
    return SmartError(
        status=502,
        title="The patient record could not be used",
        message="The EHR's FHIR server sent data that is not valid FHIR R4 or belongs to another patient.",
        action="Tell the EHR team; the service log names the resource at fault.",
    )


def bad_request() -> SmartError:
    return SmartError(
        status=400,
        title="This link is malformed",
        message="The request's parameters could not be read.",
    )


def bad_reference() -> SmartError:
    return SmartError(
        status=400,
        title="This evidence link is malformed",
        message="The link does not name a record entry the app can show (Type/id of a clinical resource).",
        action="Go back to the eligibility page and use its evidence links.",
    )


def evidence_not_found() -> SmartError:
    return SmartError(
        status=404,
        title="This record entry was not found",
        message="The EHR's FHIR server has no such entry: it may have been removed or merged since.",
        action="Go back to the eligibility page (reload it to evaluate the current record).",
    )


def evidence_not_available() -> SmartError:
    return SmartError(
        status=403,
        title="The EHR does not let the app read this entry",
        message="The FHIR server refused this app's access to that record entry.",
        action="Look the entry up in the EHR itself, or ask the EHR team for access.",
    )


def evidence_other_patient() -> SmartError:
    return SmartError(
        status=403,
        title="This entry is not about this patient",
        message="The record entry does not name the patient this app was opened for, so it is not shown.",
        action="Go back to the eligibility page; if an evidence link led here, tell the EHR team.",
    )


def bad_form(detail: str) -> SmartError:
    return SmartError(
        status=400,
        title="The checklist could not be saved",
        message=f"The form sent was not one this page made: {detail}.",
        action="Reload the page and save the checklist again.",
    )


def form_expired() -> SmartError:
    return SmartError(
        status=403,
        title="The checklist could not be saved",
        message="The form does not carry this launch's security token "
        "(it came from another page, or the app was opened again since).",
        action="Reload the page and save the checklist again.",
    )
