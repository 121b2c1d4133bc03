// Sluice operator console: small enhancements. Every page works without
// this file. Written for Sluice; no external code.
(function () {
  "use strict";
  // Queue page: the header checkbox selects every entry.
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      var boxes = document.querySelectorAll("input.pick");
      for (var i = 0; i < boxes.length; i++) boxes[i].checked = all.checked;
    });
  }
  // Live tail: new history rows stream in (server-sent events); the rows
  // arrive as HTML the server escaped, like every page it renders.
  var status = document.getElementById("tail-status");
  var rows = document.getElementById("rows");
  if (status && rows && window.EventSource) {
    var after = status.getAttribute("data-after") || "";
    var src = new EventSource("/tail/events" + (after ? "?after=" + encodeURIComponent(after) : ""));
    status.textContent = "Streaming: new records appear at the top as they are written.";
    src.onmessage = function (ev) {
      var t = document.createElement("tbody");
      t.innerHTML = ev.data;
      var tr = t.firstElementChild;
      if (!tr) return;
      tr.className = "new";
      rows.insertBefore(tr, rows.firstChild);
      while (rows.children.length > 500) rows.removeChild(rows.lastChild);
    };
    src.onerror = function () {
      status.textContent = "Stream interrupted; reconnecting (or reload the page).";
    };
  }
})();
