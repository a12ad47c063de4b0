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


def test_a_pickled_catalog_evaluates_the_same() -> None:
    """A catalog sent to Spark workers (pickled) keeps its shared-rule keys and its results."""
    import pickle

    original = load_catalog()
    copy = pickle.loads(pickle.dumps(original))
    assert len(copy.rule_keys) == len(original.rule_keys)
    for loaded in _cases():
        as_of = date.fromisoformat(loaded.case.as_of)
        mine = evaluate(original, build_record(loaded.case.parts()), as_of=as_of).to_json_dict()
        theirs = evaluate(copy, build_record(loaded.case.parts()), as_of=as_of).to_json_dict()
        assert mine == theirs, loaded.label


def test_units_parse_in_threads_at_once() -> None:
    """The UCUM parser is not thread-safe on first use (seen: "unit 'mg' is not valid UCUM" when
    app instances load mappings in threads at once): first parses from many threads all succeed."""
    from concurrent.futures import ThreadPoolExecutor

    from cds_service.engine import units

    wanted = ["mg", "mg/dL", "umol/L", "g/L", "10*9/L", "mL/min", "kg", "m"] * 3
    for _ in range(20):
        units.parse_unit.cache_clear()
        units.factor.cache_clear()
        units._registry.cache_clear()
        with ThreadPoolExecutor(max_workers=8) as pool:
            parsed = list(pool.map(units.parse_unit, wanted))
        assert len(parsed) == len(wanted)


def test_equal_criteria_are_shared_but_a_relabelled_one_keeps_its_own_label(tmp_path: Path) -> None:
    """A copied trial's criteria share one evaluation (one key object); a criterion with the same
    id and rule but its own label is evaluated apart, so its report shows its own words."""
    (tmp_path / "trials").mkdir()
    (tmp_path / "valuesets").symlink_to(DEFAULT_MAPPINGS / "valuesets")
    source = DEFAULT_MAPPINGS / "trials" / "NCT06888960.yaml"
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    for new_id, label in (("COPY-A", None), ("COPY-B", "Adult (relabelled)")):
        copy = dict(data, trial=new_id, criteria=[dict(c) for c in data["criteria"]])
        if label:
            copy["criteria"][0]["label"] = label
        (tmp_path / "trials" / f"{new_id}.yaml").write_text(yaml.safe_dump(copy, allow_unicode=True))
    catalog = load_catalog(tmp_path)
    first_a, first_b = catalog.trial("COPY-A").criteria[0], catalog.trial("COPY-B").criteria[0]
    second_a, second_b = catalog.trial("COPY-A").criteria[1], catalog.trial("COPY-B").criteria[1]
    assert catalog.key(second_a) is catalog.key(second_b)
    assert catalog.key(first_a) != catalog.key(first_b)
    [loaded] = [c for c in load_vectors(DEFAULT_MAPPINGS) if c.trial == "NCT06888960"][:1]
    record = build_record(loaded.case.parts())
    report = evaluate(catalog, record, as_of=date.fromisoformat(loaded.case.as_of))
    labels = {t.trial: t.criteria[0].label for t in report.trials}
    assert labels == {"COPY-A": first_a.short_label(), "COPY-B": "Adult (relabelled)"}
