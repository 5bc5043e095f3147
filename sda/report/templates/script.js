(function () {
  // Sorting: any table whose headers carry data-key; #sort=KEY (or #sort=-KEY) sorts every
  // table that has that column, on load.
  function sortable(table, onSorted) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var current = null;
    function value(row, key, type) {
      var cell = row.querySelector('td[data-key="' + key + '"]');
      var text = cell ? cell.getAttribute("data-v") : "";
      if (text === null || text === "") return null;
      return type === "num" ? parseFloat(text) : text;
    }
    function sortBy(key, descending) {
      var header = table.querySelector('th[data-key="' + key + '"]');
      if (!header) return;
      var type = header.getAttribute("data-type");
      var keyed = rows.map(function (row, i) { return [value(row, key, type), i, row]; });
      keyed.sort(function (a, b) {
        if (a[0] === null || b[0] === null) {
          if (a[0] === b[0]) return a[1] - b[1];
          return a[0] === null ? 1 : -1;  // empty cells last, either direction
        }
        var order = type === "num" ? a[0] - b[0] : String(a[0]).localeCompare(String(b[0]));
        if (descending) order = -order;
        return order || a[1] - b[1];
      });
      keyed.forEach(function (entry, position) {
        entry[2].setAttribute("data-position", String(position));
        body.appendChild(entry[2]);
      });
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) { cell.removeAttribute("aria-sort"); });
      header.setAttribute("aria-sort", descending ? "descending" : "ascending");
      current = (descending ? "-" : "") + key;
      table.setAttribute("data-sorted-by", current);
      if (onSorted) onSorted(current);
    }
    Array.prototype.forEach.call(table.querySelectorAll("th[data-key]"), function (header) {
      header.addEventListener("click", function () {
        var key = header.getAttribute("data-key");
        sortBy(key, current === key);
      });
    });
    return {rows: rows, sortBy: sortBy};
  }

  var match = /(?:^#|&)sort=(-?)([a-z_]+)/.exec(window.location.hash);

  var table = document.getElementById("outputs");
  var outputs = sortable(table, function (key) { document.body.setAttribute("data-sorted-by", key); });
  if (match) outputs.sortBy(match[2], match[1] === "-");
  var counts = {done: 0, rejected: 0, broken: 0, failed: 0};
  outputs.rows.forEach(function (row) { counts[row.getAttribute("data-status")] += 1; });
  table.setAttribute("data-js-rows", String(outputs.rows.length));
  document.getElementById("js-count").textContent =
    outputs.rows.length + " rows: " + counts.done + " done, " + counts.broken + " broken, " + counts.failed + " failed" +
    (counts.rejected ? ", " + counts.rejected + " rejected" : "");

  // The kit view: one hit per row, played from its start by a click (or Enter / Space).
  var kit = document.getElementById("kit");
  if (!kit) return;
  var hits = sortable(kit);
  if (match) hits.sortBy(match[2], match[1] === "-");
  kit.setAttribute("data-js-rows", String(hits.rows.length));
  var player = document.getElementById("kit-player");
  function play(row) {
    var previous = kit.querySelector("tr[data-playing]");
    if (previous) previous.removeAttribute("data-playing");
    row.setAttribute("data-playing", "");
    player.src = row.getAttribute("data-src");
    player.currentTime = 0;
    var started = player.play();
    if (started && started.catch) started.catch(function () {});  // a browser may refuse to autoplay
  }
  hits.rows.forEach(function (row) {
    row.addEventListener("click", function () { play(row); });
    row.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        play(row);
      }
    });
  });
})();
