// optbench leaderboard pages: draw the plotly figures, make tables sortable, apply the filters.
// Everything the page needs is in the page or in assets/: no request leaves it.
(function () {
  "use strict";

  // Numbers sort by their data-sort value; cells with no value sort as lowest.
  Tablesort.extend("value", function () { return false; }, function (a, b) {
    var x = a === "" ? -Infinity : parseFloat(a);
    var y = b === "" ? -Infinity : parseFloat(b);
    return x === y ? 0 : (x < y ? 1 : -1);
  });

  function drawFigures() {
    document.querySelectorAll("[data-figure]").forEach(function (div) {
      var spec = JSON.parse(document.getElementById(div.dataset.figure).textContent);
      Plotly.newPlot(div, spec.data, spec.layout, {displaylogo: false, responsive: true});
    });
  }

  function applyFilters() {
    var budget = document.getElementById("budget");
    if (!budget) return;
    document.getElementById("budget-value").textContent = budget.value;
    var checked = function (name) {
      var boxes = document.querySelectorAll("input[name=" + name + "]");
      return boxes.length ? Array.prototype.filter.call(boxes, function (b) { return b.checked; })
        .map(function (b) { return b.value; }) : null;
    };
    var verdicts = checked("verdict"), families = checked("family");
    var rows = document.querySelectorAll("#board tbody tr"), shown = 0;
    rows.forEach(function (tr) {
      var pct = tr.dataset.statePct;
      var ok = (pct === "" || parseFloat(pct) <= parseFloat(budget.value)) &&
        (verdicts === null || verdicts.indexOf(tr.dataset.verdict) >= 0) &&
        (families === null || families.indexOf(tr.dataset.family) >= 0);
      tr.hidden = !ok;
      if (ok) shown += 1;
    });
    document.getElementById("shown").textContent = shown + " of " + rows.length + " optimizers shown";
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("table.sortable").forEach(function (table) { new Tablesort(table); });
    var filters = document.getElementById("filters");
    if (filters) {
      filters.addEventListener("input", applyFilters);
      filters.addEventListener("change", applyFilters);
      applyFilters();
    }
    drawFigures();
    window.optbenchReady = true;
  });
})();
