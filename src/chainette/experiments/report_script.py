"""The report's one inline script: sorting and filtering with no server and no network.

Any ``table.sortable`` sorts by a column when its header (the last header row) is clicked, again
to reverse; a cell's ``data-v`` is the number it sorts by (text otherwise). The cases table
(``#cases``) is filtered by the text box (any text of the row), the status select (a row matches
when any run has that status) and the group select, and ``#case-count`` says how many rows show.
The page reads the same without it: every row is there, in the order the run wrote them.
"""

from __future__ import annotations

__all__ = ["SCRIPT"]

SCRIPT = """
(function () {
  "use strict";
  function key(row, i) {
    var c = row.cells[i];
    if (!c) return "";
    var v = c.getAttribute("data-v");
    if (v !== null && v !== "" && !isNaN(Number(v))) return Number(v);
    return c.textContent.trim().toLowerCase();
  }
  function compare(x, y) {
    var nx = typeof x === "number", ny = typeof y === "number";
    if (nx && ny) return x - y;
    if (nx !== ny) return nx ? -1 : 1;
    return String(x).localeCompare(String(y));
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead ? table.tHead.rows : [];
    if (!heads.length || !table.tBodies.length) return;
    var body = table.tBodies[0];
    Array.prototype.forEach.call(heads[heads.length - 1].cells, function (th, i) {
      th.classList.add("sortable");
      th.title = "sort by this column";
      th.addEventListener("click", function () {
        var dir = th.getAttribute("data-dir") === "asc" ? "desc" : "asc";
        table.querySelectorAll("th[data-dir]").forEach(function (o) { o.removeAttribute("data-dir"); });
        th.setAttribute("data-dir", dir);
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var c = compare(key(a, i), key(b, i));
          return dir === "asc" ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  var cases = document.getElementById("cases");
  if (!cases) return;
  var text = document.getElementById("case-filter");
  var status = document.getElementById("status-filter");
  var group = document.getElementById("group-filter");
  var count = document.getElementById("case-count");
  function apply() {
    var q = text ? text.value.trim().toLowerCase() : "";
    var s = status ? status.value : "";
    var g = group ? group.value : "";
    var rows = cases.tBodies[0].rows, shown = 0;
    for (var k = 0; k < rows.length; k++) {
      var r = rows[k];
      var ok = (!q || r.textContent.toLowerCase().indexOf(q) >= 0) &&
        (!s || (r.getAttribute("data-status") || "").split(" ").indexOf(s) >= 0) &&
        (!g || r.getAttribute("data-group") === g);
      r.hidden = !ok;
      if (ok) shown++;
    }
    if (count) count.textContent = shown + " of " + rows.length + " cases shown";
  }
  [text, status, group].forEach(function (el) {
    if (el) { el.addEventListener("input", apply); el.addEventListener("change", apply); }
  });
  apply();
})();
"""
