"""worklist.html: the study coordinator's page, one self-contained file opened from disk.

Per trial: likely-eligible, then needs-review candidates, each with the criteria that rule them in
and those left to review, with the evidence dates; columns sort on a click, a filter box narrows
every table. Inline CSS and JS only (no external asset), allowed by a Content-Security-Policy that
names their hashes, so nothing else could run even if a value slipped through; and every value is
HTML-escaped, since it comes from patient data.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any, TextIO

from .patient import CANDIDATE_STATUSES, ELIGIBLE, NOT_ELIGIBLE, REVIEW

LIMIT = 250  # rows shown per trial before "Show more": a long table of lists is slow to lay out
_LABEL = {ELIGIBLE: "likely eligible", REVIEW: "needs review", NOT_ELIGIBLE: "not eligible"}

_CSS = """
:root{--ink:#1d2430;--muted:#5b6473;--line:#d9dee6;--ok:#1f6f43;--okbg:#e3f3e9;--rv:#7a4d00;--rvbg:#fdf0d5}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--ink);
margin:0;padding:1.2rem 2rem 3rem;background:#fff}h1{font-size:1.5rem;margin:0 0 .2rem}
h2{font-size:1.15rem;margin:2rem 0 .2rem}.meta,.counts{color:var(--muted);margin:.1rem 0}
.note{background:#f4f6f9;border-left:3px solid #8a94a6;padding:.5rem .8rem;max-width:60rem}
.tools{position:sticky;top:0;background:#fff;padding:.6rem 0;border-bottom:1px solid var(--line);z-index:1}
.tools select{font:inherit;padding:.3rem;margin-left:.3rem}
.tools input{font:inherit;padding:.35rem .5rem;width:24rem;max-width:100%;border:1px solid #aab2bf;
border-radius:4px}
#shown{color:var(--muted);margin-left:.8rem}nav a{margin-right:1rem}
table{border-collapse:collapse;width:100%;margin-top:.6rem;table-layout:fixed}th,td{text-align:left;vertical-align:top;
padding:.4rem .5rem;border-bottom:1px solid var(--line)}th{background:#f4f6f9;cursor:pointer;
white-space:nowrap;user-select:none}th[aria-sort=ascending]::after{content:" ▲"}
th[aria-sort=descending]::after{content:" ▼"}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.id{font-family:ui-monospace,monospace;
word-break:break-all}ul{margin:0;padding-left:1rem}li{margin:.1rem 0}
time{color:var(--muted);white-space:nowrap}
.badge{display:inline-block;padding:.05rem .45rem;border-radius:999px;font-size:.85em;white-space:nowrap}
.likely-eligible{background:var(--okbg);color:var(--ok)}.needs-review{background:var(--rvbg);color:var(--rv)}
.manual{color:var(--muted);font-size:.9em}button.more{font:inherit;margin:.6rem 0;padding:.3rem .8rem}
.empty{color:var(--muted);font-style:italic}
.w-id{width:11rem}.w-status{width:8.5rem}.w-num{width:4rem}.w-review{width:6.5rem}.w-date{width:8.5rem}
@media print{.tools{position:static}th{cursor:auto}}
"""

_JS = """
(function(){
  var LIMIT = @LIMIT@;
  function key(cell, type){
    var v = cell.getAttribute('data-sort'); if (v === null) v = cell.textContent.trim();
    if (type === 'num') { var n = parseFloat(v); return isNaN(n) ? -Infinity : n; }
    return v.toLowerCase();
  }
  var input = document.getElementById('filter'), status = document.getElementById('status');
  var shown = document.getElementById('shown');
  var texts = new Map();
  function filter(){
    var terms = input.value.toLowerCase().split(/\\s+/).filter(Boolean), matching = 0, visible = 0, total = 0;
    document.querySelectorAll('table.worklist').forEach(function(table){
      var room = table.getAttribute('data-all') ? Infinity : LIMIT, hiddenHere = 0;
      Array.prototype.forEach.call(table.tBodies[0].rows, function(row){
        var text = texts.get(row);
        if (text === undefined) { text = row.textContent.toLowerCase(); texts.set(row, text); }
        var ok = terms.every(function(t){ return text.indexOf(t) >= 0; }) &&
          (!status.value || row.getAttribute('data-status') === status.value);
        total++; if (ok) matching++;
        var show = ok && room > 0; if (show) { room--; visible++; } else if (ok) { hiddenHere++; }
        row.hidden = !show;
      });
      var more = table.parentNode.querySelector('button.more');
      more.hidden = hiddenHere === 0; more.textContent = 'Show ' + hiddenHere + ' more';
    });
    shown.textContent = matching + ' of ' + total + ' candidates match' +
      (visible < matching ? ', ' + visible + ' shown' : '');
  }
  document.querySelectorAll('table.worklist').forEach(function(table){
    var heads = table.querySelectorAll('thead th');
    heads.forEach(function(th, col){
      th.tabIndex = 0;
      function sort(){
        var asc = th.getAttribute('aria-sort') !== 'ascending';
        heads.forEach(function(h){ h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var type = th.getAttribute('data-type') || 'text';
        var body = table.tBodies[0];
        var keyed = Array.prototype.map.call(body.rows, function(r, i){
          return {row: r, key: key(r.cells[col], type), i: i};
        });
        keyed.sort(function(a, b){
          if (a.key < b.key) return asc ? -1 : 1; if (a.key > b.key) return asc ? 1 : -1; return a.i - b.i;
        });
        var sorted = document.createDocumentFragment();
        keyed.forEach(function(k){ sorted.appendChild(k.row); });
        body.appendChild(sorted);
        filter();
      }
      th.addEventListener('click', sort);
      th.addEventListener('keydown', function(e){
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sort(); }
      });
    });
    table.parentNode.querySelector('button.more').addEventListener('click', function(){
      table.setAttribute('data-all', '1'); filter();
    });
  });
  input.addEventListener('input', filter); status.addEventListener('change', filter); filter();
})();
""".replace("@LIMIT@", str(LIMIT))


def _hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def _reasons(items: Sequence[Mapping[str, Any]]) -> str:
    if not items:
        return '<span class="empty">none</span>'
    out = []
    for item in items:
        manual = ' <span class="manual">(manual)</span>' if item.get("manual") else ""
        text = str(item.get("reason", ""))
        dates = "".join(f" <time>{escape(d)}</time>" for d in item.get("dates", ()) if d not in text)
        reason = escape(text)
        name = str(item.get("label") or item.get("id", ""))
        out.append(f"<li><b>{escape(name)}</b>{manual}: {reason}{dates}</li>")
    return "<ul>" + "".join(out) + "</ul>"


def _row(item: Mapping[str, Any], *, hidden: bool = False) -> str:
    status = str(item.get("status", ""))
    order = CANDIDATE_STATUSES.index(status) if status in CANDIDATE_STATUSES else 9
    latest = escape(str(item.get("latest", "")))
    return (
        f'<tr data-status="{escape(status)}"{" hidden" if hidden else ""}>'
        f'<td class="id">{escape(str(item.get("patient", "")))}</td>'
        f'<td data-sort="{order}"><span class="badge {escape(status)}">{escape(_LABEL.get(status, status))}'
        f'</span></td><td class="num">{int(item.get("met", 0))}</td>'
        f'<td class="num">{int(item.get("review_count", 0))}</td>'
        f'<td data-sort="{latest}">{latest or "—"}</td>'
        f"<td>{_reasons(item.get('rule_in', ()))}</td><td>{_reasons(item.get('review', ()))}</td></tr>\n"
    )


_HEAD = (
    '<colgroup><col class="w-id"><col class="w-status"><col class="w-num"><col class="w-review">'
    '<col class="w-date"><col><col></colgroup>'
    '<thead><tr><th data-type="text">Patient</th><th data-type="num">Status</th>'
    '<th data-type="num">Met</th><th data-type="num">To review</th><th data-type="text">Latest evidence</th>'
    '<th data-type="text">Rules in</th><th data-type="text">Left to review</th></tr></thead>'
)


def write_worklist(
    path: Path,
    *,
    as_of: str,
    trials: Sequence[tuple[str, str]],
    counts: Mapping[str, Mapping[str, int]],
    patients: int,
    candidates: Callable[[str, str], Iterable[Mapping[str, Any]]],
) -> None:
    """Write the page, streaming each trial's candidates (``candidates(trial, status)``) in order."""
    with open(path, "w", encoding="utf-8") as f:
        _write(f, as_of=as_of, trials=trials, counts=counts, patients=patients, candidates=candidates)


def _write(
    f: TextIO,
    *,
    as_of: str,
    trials: Sequence[tuple[str, str]],
    counts: Mapping[str, Mapping[str, int]],
    patients: int,
    candidates: Callable[[str, str], Iterable[Mapping[str, Any]]],
) -> None:
    csp = f"default-src 'none'; style-src '{_hash(_CSS)}'; script-src '{_hash(_JS)}'"
    f.write(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Pre-screening worklist, as of {escape(as_of)}</title><style>{_CSS}</style></head><body>\n"
        f'<h1>Pre-screening worklist</h1><p class="meta">As of {escape(as_of)} · {patients:,} patients '
        'screened</p><p class="note">An automated pre-screen of coded data: each candidate below still '
        "needs the study team's review of the record and of the criteria left to review. Not-eligible "
        'patients are counted, not listed.</p>\n<div class="tools"><label>Filter '
        '<input id="filter" type="search" placeholder="patient id, criterion, reason…" '
        'autocomplete="off"></label> <label>Status <select id="status"><option value="">all</option>'
        f'<option value="{ELIGIBLE}">likely eligible</option><option value="{REVIEW}">needs review</option>'
        '</select></label><span id="shown"></span></div>\n<nav>'
    )
    for trial, _ in trials:
        f.write(f'<a href="#trial-{escape(trial)}">{escape(trial)}</a>')
    f.write("</nav>\n")
    for trial, title in trials:
        by_status = counts.get(trial, {})
        summary = " · ".join(f"{by_status.get(s, 0):,} {_LABEL[s]}" for s in (ELIGIBLE, REVIEW, NOT_ELIGIBLE))
        f.write(
            f'<section id="trial-{escape(trial)}"><h2>{escape(trial)} — {escape(title)}</h2>'
            f'<p class="counts">{summary}</p><table class="worklist">{_HEAD}<tbody>\n'
        )
        n = 0
        for status in CANDIDATE_STATUSES:
            for item in candidates(trial, status):
                f.write(_row(item, hidden=n >= LIMIT))
                n += 1
        f.write('</tbody></table><button type="button" class="more" hidden></button></section>\n')
    f.write(f"<script>{_JS}</script></body></html>\n")
