"""The rule reference is generated from the model, so it cannot drift from what the loader accepts."""

from __future__ import annotations

from pathlib import Path

from cds_service.engine.docs import render
from cds_service.engine.model import RULE_KINDS

RULES_MD = Path(__file__).resolve().parents[2] / "mappings" / "RULES.md"
README = Path(__file__).resolve().parents[2] / "mappings" / "README.md"


def test_rules_md_is_what_the_model_generates() -> None:
    """Regenerate with: python -m cds_service.engine.docs > mappings/RULES.md"""
    assert RULES_MD.read_text(encoding="utf-8") == render()


def test_every_rule_kind_is_in_the_reference_and_the_guide() -> None:
    reference = RULES_MD.read_text(encoding="utf-8")
    guide = README.read_text(encoding="utf-8")
    for kind in RULE_KINDS:
        assert f"### `{kind}`" in reference, kind
        assert f"`{kind}`" in guide, f"mappings/README.md does not explain {kind}"
