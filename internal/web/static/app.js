// deskrun console: the little JavaScript the pages need beyond htmx —
// Server-Sent Events for live run logs and machine state.
(function () {
  "use strict";

  function followRun(pre) {
    var status = document.getElementById("log-status");
    var es = new EventSource(pre.dataset.events);
    es.addEventListener("log", function (e) {
      var chunk = JSON.parse(e.data);
      var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      var span = document.createElement("span");
      if (chunk.stream === "stderr") span.className = "stderr";
      span.textContent = chunk.text;
      pre.appendChild(span);
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    });
    es.addEventListener("state", function (e) {
      refreshSummary();
      if (status) status.textContent = "Run " + e.data + "; following the output live…";
    });
    es.addEventListener("end", function (e) {
      es.close();
      refreshSummary();
      if (status) status.textContent = "The run is over (" + e.data + ").";
    });
  }

  function refreshSummary() {
    var box = document.getElementById("run-summary");
    if (box && window.htmx) {
      htmx.ajax("GET", box.dataset.summary, { target: "#run-summary", swap: "innerHTML" });
    }
  }

  function followMachines(table) {
    var body = document.getElementById("machine-rows");
    var es = new EventSource(table.dataset.live);
    es.addEventListener("machines", function (e) {
      body.innerHTML = e.data; // server-rendered, escaped by html/template
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var pre = document.getElementById("run-log");
    if (pre && pre.dataset.events) followRun(pre);
    var machines = document.querySelector("table[data-live]");
    if (machines) followMachines(machines);
  });
})();
