"""Trial ids are not special-cased anywhere: every packaged trial, copied under a new id, loads and
gives the same results on its own vectors; a catalog of many copies reuses equal rules."""

from __future__ import annotations

from datetime import date
from functools import cache
from pathlib import Path

import yaml

from cds_service.engine.evaluate import evaluate
from cds_service.engine.loader import DEFAULT_MAPPINGS, Catalog, load_catalog
from cds_service.engine.vectors import LoadedCase, load_vectors
from cds_service.record import build_record


@cache
def _copies(root: Path) -> Catalog:
    """The packaged trials and a copy of each under COPY-<id>, reading the packaged value sets."""
    (root / "trials").mkdir(parents=True, exist_ok=True)
    if not (root / "valuesets").exists():
        (root / "valuesets").symlink_to(DEFAULT_MAPPINGS / "valuesets")
    for path in sorted((DEFAULT_MAPPINGS / "trials").glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        (root / "trials" / path.name).write_text(path.read_text(encoding="utf-8"))
        data["trial"] = "COPY-" + data["trial"]
        (root / "trials" / f"{data['trial']}.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    return load_catalog(root)


def _cases() -> list[LoadedCase]:
    return [c for c in load_vectors(DEFAULT_MAPPINGS) if c.path.stem in ("status", "deceased")]


def test_copies_under_new_ids_give_the_same_results() -> None:
    import tempfile

    copies = _copies(Path(tempfile.mkdtemp(prefix="cds-copies-")))
    original = load_catalog()
    for loaded in _cases():
        record = build_record(loaded.case.parts())
        as_of = date.fromisoformat(loaded.case.as_of)
        mine = evaluate(original, record, as_of=as_of, trial_ids=[loaded.trial]).trials[0]
        copy = evaluate(
            copies, build_record(loaded.case.parts()), as_of=as_of, trial_ids=["COPY-" + loaded.trial]
        )
        theirs = copy.trials[0]
        assert theirs.trial == "COPY-" + loaded.trial and theirs.status == mine.status, loaded.label
        assert [c.model_dump() for c in theirs.criteria] == [c.model_dump() for c in mine.criteria]


def test_equal_rules_across_trials_share_one_canonical_key() -> None:
    import tempfile

    copies = _copies(Path(tempfile.mkdtemp(prefix="cds-copies-")))
    keys_by_trial = {
        trial_id: {copies.key(c.rule) for c in trial.criteria if c.rule is not None}
        for trial_id, trial in copies.trials.items()
    }
    for trial_id, keys in keys_by_trial.items():
        if trial_id.startswith("COPY-"):
            assert keys == keys_by_trial[trial_id.removeprefix("COPY-")]
