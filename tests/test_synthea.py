"""Real (synthetic) Synthea patients: evaluated without error, and none is eligible for NCT06888960.

None of them has systemic lupus erythematosus. Three small patients live in the repo; the full
shared set (including the 8.7 MB heavy bundle) is an extended test that skips when ../shared is absent.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from cds_service.engine.evaluate import evaluate
from cds_service.record import from_bytes
from tests.conftest import DATA, SHARED_SYNTHEA, needs_shared, packaged_catalog

AS_OF = date(2026, 11, 25)
IN_REPO = sorted((DATA / "synthea").glob("*.json"))
SHARED = (
    sorted(p for p in SHARED_SYNTHEA.glob("*.json") if p.name != "PROVENANCE.json")
    if SHARED_SYNTHEA.is_dir()
    else []
)


def _check_not_eligible(path: Path) -> None:
    record = from_bytes(path.read_bytes())
    report = evaluate(packaged_catalog(), record, as_of=AS_OF, trial_ids=["NCT06888960"])
    trial = report.trials[0]
    assert trial.status == "not-eligible", f"{path.name}: {trial.status}"
    sle = trial.criterion("sle-diagnosis")
    assert sle.result in ("not-met", "unknown"), f"{path.name}: sle-diagnosis {sle.result}"
    assert all(c.reason for c in trial.criteria)


@pytest.mark.parametrize("path", IN_REPO, ids=lambda p: p.name.split("_")[0] + "_" + p.name.split("_")[1])
def test_in_repo_synthea_patient_is_not_eligible(path: Path) -> None:
    _check_not_eligible(path)


@needs_shared()
@pytest.mark.extended
@pytest.mark.parametrize("path", SHARED or [Path("absent")], ids=lambda p: p.name[:40])
def test_shared_synthea_patient_is_not_eligible(path: Path) -> None:
    """Per file: the whole shared Synthea set, heavy bundle included."""
    _check_not_eligible(path)
