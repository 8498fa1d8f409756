"""The review page: one self-contained HTML file (no server, no network) to walk the queue by keyboard.

Keys: `k` keep the given label, `r` relabel to the suggestion, `d` drop, `u` unsure, `0`-`9` relabel to
that class (the class list on the page shows the digits), `←` / `→` move. Decisions are kept in the
browser's localStorage (per queue), so closing the page loses nothing; "Export decisions" saves
`decisions.csv` in the decisions-CSV layout (`pipeline.review.decisions`), ready for `review.decisions`.
"""

from __future__ import annotations

import hashlib
import json

import polars as pl

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>gradclean review</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.2em; color: #222; }
#top { display: flex; gap: 1.2em; align-items: center; flex-wrap: wrap; }
#card { display: flex; gap: 1.5em; margin-top: 1em; }
#img { width: 256px; height: 256px; image-rendering: pixelated; border: 1px solid #ccc; object-fit: contain; }
.given { color: #a00; } .suggested { color: #070; } .muted { color: #666; font-size: 12px; }
#classes span { display: inline-block; margin: 2px 6px 2px 0; padding: 1px 6px; border: 1px solid #ccc;
  border-radius: 4px; }
#decision { font-weight: bold; margin-top: .6em; } kbd { border: 1px solid #999; border-radius: 3px;
  padding: 0 4px; background: #f4f4f4; }
</style></head><body>
<div id="top"><b>gradclean review</b><span id="progress"></span>
<label>reviewer <input id="reviewer" size="14"></label>
<button id="export">Export decisions</button></div>
<div id="card"><img id="img" alt="sample">
<div><div id="title"></div><div id="labels"></div><div id="reason" class="muted"></div>
<div id="opinions" class="muted"></div><div id="decision"></div>
<p><kbd>k</kbd> keep · <kbd>r</kbd> relabel to suggestion · <kbd>d</kbd> drop · <kbd>u</kbd> unsure ·
<kbd>0</kbd>-<kbd>9</kbd> pick a class · <kbd>←</kbd> <kbd>→</kbd> move</p>
<div id="classes"></div></div></div>
<script id="queue" type="application/json">__QUEUE__</script>
<script>
const Q = JSON.parse(document.getElementById("queue").textContent);
const KEY = "gradclean-review:" + Q.id;
const state = JSON.parse(localStorage.getItem(KEY) || '{"pos": 0, "decisions": {}, "reviewer": ""}');
const $ = (id) => document.getElementById(id);
const ENTITIES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" };
const esc = (v) => String(v).replace(/[&<>"]/g, (c) => ENTITIES[c]);
const save = () => localStorage.setItem(KEY, JSON.stringify(state));
$("reviewer").value = state.reviewer;
$("reviewer").addEventListener("input", (e) => { state.reviewer = e.target.value; save(); });
$("classes").innerHTML = Q.classes.map((c, i) => `<span>${i < 10 ? i + ": " : ""}${esc(c)}</span>`).join("");
function show() {
  const it = Q.items[state.pos], d = state.decisions[it.sample_id];
  $("img").src = it.image;
  $("title").textContent = `#${it.rank} of ${Q.items.length} · sample ${it.sample_id} · ${it.source}`;
  $("labels").innerHTML = `given <b class="given">${esc(it.given_class)}</b> · suggested ` +
    `<b class="suggested">${esc(it.suggested_class)}</b> · expected gain ${it.expected_gain.toFixed(2)}`;
  $("reason").textContent = it.reason;
  $("opinions").textContent = it.opinions;
  const to = d && d.new_label !== "" ? " → " + d.new_label : "";
  $("decision").textContent = d ? `decision: ${d.decision}${to}` : "";
  const n = Object.keys(state.decisions).length;
  $("progress").textContent = `${n} of ${Q.items.length} decided`;
}
function decide(decision, newLabel) {
  const it = Q.items[state.pos];
  const at = new Date().toISOString();
  state.decisions[it.sample_id] = { decision, new_label: newLabel ?? "", decided_at: at };
  state.pos = Math.min(state.pos + 1, Q.items.length - 1);
  save(); show();
}
function csvCell(v) { v = String(v ?? ""); return /[",\\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }
window.gradcleanDecisionsCSV = function () {
  const rows = [["sample_id", "decision", "new_label", "reviewer", "note", "decided_at"]];
  for (const it of Q.items) {
    const d = state.decisions[it.sample_id];
    if (d) rows.push([it.sample_id, d.decision, d.new_label, state.reviewer, "", d.decided_at]);
  }
  return rows.map((r) => r.map(csvCell).join(",")).join("\\n") + "\\n";
};
$("export").addEventListener("click", () => {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([window.gradcleanDecisionsCSV()], { type: "text/csv" }));
  a.download = "decisions.csv"; document.body.appendChild(a); a.click(); a.remove();
});
document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT") return;
  const it = Q.items[state.pos];
  if (e.key === "k") decide("keep");
  else if (e.key === "r") decide("relabel", it.suggested_class);
  else if (e.key === "d") decide("drop");
  else if (e.key === "u") decide("unsure");
  else if (/^[0-9]$/.test(e.key) && +e.key < Q.classes.length)
    decide(Q.classes[+e.key] === it.given_class ? "keep" : "relabel", Q.classes[+e.key]);
  else if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
    state.pos = Math.min(Math.max(state.pos + (e.key === "ArrowRight" ? 1 : -1), 0), Q.items.length - 1);
    save(); show();
  }
});
show();
</script></body></html>
"""


def review_page(queue: pl.DataFrame, images: dict[int, str], class_names: list[str]) -> str:
    """The page for `queue` (the REVIEW_QUEUE table, in order); `images` maps sample_id -> `data:` URI."""
    items = [
        {
            "sample_id": r["sample_id"],
            "rank": r["rank"],
            "given_class": r["given_class"],
            "suggested_class": r["suggested_class"],
            "expected_gain": float(r["expected_gain"]),
            "reason": r["reason"],
            "opinions": r["opinions"],
            "source": r["source_path"] or f"index {r['source_index']}",
            "image": images[r["sample_id"]],
        }
        for r in queue.iter_rows(named=True)
    ]
    ident = hashlib.sha256(json.dumps([i["sample_id"] for i in items]).encode()).hexdigest()[:16]
    data = json.dumps({"id": ident, "classes": class_names, "items": items}).replace("</", "<\\/")
    return PAGE.replace("__QUEUE__", data)
