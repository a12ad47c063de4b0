"""worklist.html: escaped, self-contained, and sortable and filterable in a real browser (chromium)."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cds_service.screen.worklist import write_worklist
from tests.screen.conftest import screen
from tests.support.browser import chromium

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
HOSTILE = '<img src=x onerror="window.pwned=1">'


def _page(path: Path, candidates: list[dict[str, Any]]) -> None:
    write_worklist(
        path,
        as_of="2026-06-01",
        trials=[("NCT-<b>X</b>", "A <script>window.pwned=2</script> title")],
        counts={"NCT-<b>X</b>": {"likely-eligible": 1}},
        patients=1,
        candidates=lambda trial, status: [c for c in candidates if c["status"] == status],
    )


def _hostile() -> dict[str, Any]:
    reason = {"id": HOSTILE, "reason": f"value {HOSTILE}", "manual": False, "dates": [HOSTILE]}
    return {
        "patient": HOSTILE,
        "trial": "NCT-<b>X</b>",
        "title": "t",
        "status": "likely-eligible",
        "met": 1,
        "review_count": 1,
        "manual": 0,
        "rule_in": [reason],
        "review": [reason],
        "latest": HOSTILE,
    }


def test_every_value_is_escaped_and_nothing_is_external(tmp_path: Path) -> None:
    path = tmp_path / "worklist.html"
    _page(path, [_hostile()])
    html = path.read_text()
    assert "<img" not in html and "<script>window" not in html and "<b>X</b>" not in html
    assert "&lt;img src=x onerror=&quot;window.pwned=1&quot;&gt;" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # no external asset
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def _column(page: Any, index: int) -> list[str]:
    values: list[str] = page.eval_on_selector_all(
        "table.worklist tbody tr:not([hidden])", f"rows => rows.map(r => r.cells[{index}].innerText.trim())"
    )
    return values


@pytest.fixture(scope="module")
def one_trial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A larger population (only the types the trials read) screened for one trial alone — the one
    with the most candidates of both kinds: a single worklist table to sort and filter."""
    from benchmarks.make_population import generate
    from tests.conftest import packaged_catalog

    source = tmp_path_factory.mktemp("worklist-population") / "export"
    generate(160, source, seed=5, only_needed=True, catalog=packaged_catalog())
    everything = tmp_path_factory.mktemp("worklist-all")
    screen(source, everything, workers=1)
    with open(everything / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_trial: dict[str, list[str]] = {}
    for row in rows:
        if row["status"] in ("likely-eligible", "needs-review"):
            by_trial.setdefault(row["trial"], []).append(row["status"])
    trial = max(by_trial, key=lambda t: (len(set(by_trial[t])), len(by_trial[t])))
    out = tmp_path_factory.mktemp("one-trial")
    screen(source, out, workers=1, trial_ids=(trial,))
    return out


def test_filter_and_sort_in_chromium(browser: Any, one_trial: Path) -> None:
    out = one_trial
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    candidates = [r for r in rows if r["status"] in ("likely-eligible", "needs-review")]
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto((out / "worklist.html").as_uri())
    statuses = _column(page, 1)
    assert len(statuses) == len(candidates) > 2
    assert statuses == sorted(statuses, key=lambda s: s != "likely eligible")  # eligible first
    assert page.inner_text("#shown") == f"{len(candidates)} of {len(candidates)} candidates match"

    target = next(r["patient"] for r in candidates if r["status"] == "needs-review")
    page.fill("#filter", target)
    assert _column(page, 0) == [target]
    assert page.inner_text("#shown") == f"1 of {len(candidates)} candidates match"
    page.fill("#filter", "")

    page.click("th:has-text('Patient')")
    ids = _column(page, 0)
    assert ids == sorted(ids, key=str.lower)
    page.click("th:has-text('Patient')")
    assert _column(page, 0) == sorted(ids, key=str.lower, reverse=True)
    page.click("th:has-text('To review')")
    counts = [int(v) for v in _column(page, 3)]
    assert counts == sorted(counts) and len(set(counts)) > 1
    assert page.get_attribute("th:has-text('To review')", "aria-sort") == "ascending"

    page.select_option("#status", "needs-review")
    assert set(_column(page, 1)) == {"needs review"}
    page.select_option("#status", "")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "worklist.png"), full_page=False)
    assert errors == []  # the CSP hashes let the inline script and style run, nothing else
    page.close()


def test_hostile_values_stay_text_in_chromium(browser: Any, tmp_path: Path) -> None:
    path = tmp_path / "worklist.html"
    _page(path, [_hostile()])
    page = browser.new_page()
    page.goto(path.as_uri())
    assert page.evaluate("window.pwned") is None
    assert page.locator("img").count() == 0
    assert page.inner_text("td.id") == HOSTILE
    page.close()


def test_a_long_list_shows_the_first_rows_then_more_on_request(browser: Any, tmp_path: Path) -> None:
    from cds_service.screen import worklist

    many = [
        {**_hostile(), "patient": f"p{i:04d}", "rule_in": [], "review": []} for i in range(worklist.LIMIT + 7)
    ]
    path = tmp_path / "worklist.html"
    _page(path, many)
    page = browser.new_page()
    page.goto(path.as_uri())
    assert len(_column(page, 0)) == worklist.LIMIT
    assert page.inner_text("#shown") == f"{len(many)} of {len(many)} candidates match, {worklist.LIMIT} shown"
    page.fill("#filter", "p0256")  # beyond the first rows, still found
    assert _column(page, 0) == ["p0256"]
    page.fill("#filter", "")
    page.click("button.more")
    assert len(_column(page, 0)) == len(many) and page.locator("button.more").is_hidden()
    page.click("th:has-text('Patient')")
    page.click("th:has-text('Patient')")
    assert _column(page, 0)[0] == f"p{len(many) - 1:04d}"
    page.close()
