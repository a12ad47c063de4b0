"""Mapping files are validated strictly at load; every refusal names file, criterion and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cds_service.engine.loader import load_catalog
from cds_service.errors import MappingError
from tests.conftest import ALL_CONSTRUCTS


@pytest.fixture
def mappings(tmp_path: Path) -> Path:
    root = tmp_path / "mappings"
    shutil.copytree(ALL_CONSTRUCTS, root)
    return root


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"fixture drifted: {old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


def _refusal(root: Path) -> str:
    with pytest.raises(MappingError) as err:
        load_catalog(root)
    return str(err.value)


def test_the_test_only_trial_loads(mappings: Path) -> None:
    catalog = load_catalog(mappings)
    assert list(catalog.trials) == ["TEST-ALL"]
    assert catalog.valuesets["neoplasm"].contains("http://hl7.org/fhir/sid/icd-10-cm", "C44.91")


def test_unknown_key_in_a_rule(mappings: Path) -> None:
    _edit(mappings / "trials" / "TEST-ALL.yaml", "window: 3mo,", "window: 3mo, windw: 2,")
    message = _refusal(mappings)
    assert "TEST-ALL.yaml" in message
    assert "criteria[2] (hba1c-high) › rule › lab › windw" in message
    assert "Extra inputs are not permitted" in message


def test_unknown_valueset_name(mappings: Path) -> None:
    _edit(mappings / "trials" / "TEST-ALL.yaml", "valueset: hba1c,", "valueset: hba1c-typo,")
    message = _refusal(mappings)
    assert (
        "criteria[2] (hba1c-high) › rule › lab › valueset" in message
        and "unknown value set 'hba1c-typo'" in message
    )


def test_malformed_snomed_code(mappings: Path) -> None:
    _edit(mappings / "valuesets" / "diabetes.yaml", '"44054006"', '"44054007"')
    message = _refusal(mappings)
    assert "diabetes.yaml" in message and "Verhoeff" in message and "codes[0]" in message


def test_malformed_loinc_code(mappings: Path) -> None:
    _edit(mappings / "valuesets" / "hba1c.yaml", '"4548-4"', '"4548-5"')
    assert "check digit" in _refusal(mappings)


def test_malformed_icd10cm_code(mappings: Path) -> None:
    _edit(mappings / "valuesets" / "diabetes.yaml", '"E11*"', '"E1.1x"')
    assert "ICD-10-CM code 'E1.1x'" in _refusal(mappings)


def test_unit_that_ucum_cannot_parse(mappings: Path) -> None:
    _edit(mappings / "trials" / "TEST-ALL.yaml", "unit: mg/dL}", "unit: mg/dLL}")
    message = _refusal(mappings)
    assert "criteria[6] (kidney) › rule › lab › threshold › unit" in message
    assert "not valid UCUM" in message


def test_duplicate_criterion_id(mappings: Path) -> None:
    _edit(mappings / "trials" / "TEST-ALL.yaml", "- id: diabetes\n", "- id: adult-under-80\n")
    assert "duplicate criterion id 'adult-under-80'" in _refusal(mappings)


def test_duplicate_yaml_key(mappings: Path) -> None:
    _edit(
        mappings / "trials" / "TEST-ALL.yaml", "kind: inclusion\n", "kind: inclusion\n    kind: exclusion\n"
    )
    assert "duplicate key 'kind'" in _refusal(mappings)


def test_bad_window(mappings: Path) -> None:
    _edit(mappings / "trials" / "TEST-ALL.yaml", "window: 3mo,", "window: 3 months,")
    assert "window '3 months' is not like" in _refusal(mappings)


def test_rule_with_two_kinds(mappings: Path) -> None:
    _edit(
        mappings / "trials" / "TEST-ALL.yaml",
        "rule: {age: {min: 18, max: 80}}",
        "rule: {age: {min: 18}, condition: {valueset: diabetes, when: ever}}",
    )
    assert "exactly one of" in _refusal(mappings)


def test_cvx_code_left_unquoted_becomes_a_number_and_is_refused(mappings: Path) -> None:
    _edit(mappings / "valuesets" / "flu-live.yaml", 'code: "111"', "code: 111")
    assert "flu-live.yaml" in _refusal(mappings)


def test_include_cycle(mappings: Path) -> None:
    _edit(mappings / "valuesets" / "skin-cancer.yaml", "codes:", "include: [neoplasm]\ncodes:")
    assert "include cycle" in _refusal(mappings)


def test_manual_criterion_needs_no_rule_but_others_do(mappings: Path) -> None:
    _edit(mappings / "trials" / "TEST-ALL.yaml", "    manual: true\n  - id: cancer", "  - id: cancer")
    assert "criteria[4] (consent)" in _refusal(mappings)


def test_a_reload_sees_an_edited_file_and_an_unchanged_tree_is_loaded_once(mappings: Path) -> None:
    first = load_catalog(mappings)
    assert load_catalog(mappings) is first  # the same files: the catalog already built
    _edit(mappings / "trials" / "TEST-ALL.yaml", "short_title: Every construct", "short_title: Edited")
    edited = load_catalog(mappings)
    assert edited is not first and edited.trials["TEST-ALL"].short_title == "Edited"
    (mappings / "valuesets" / "extra.yaml").write_text(
        "id: extra\ntitle: extra\nsources: [test]\ncodes: [{system: loinc, code: '2160-0'}]\n"
    )
    assert "extra" in load_catalog(mappings).valuesets
