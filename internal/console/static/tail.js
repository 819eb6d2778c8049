// agentauthz console: the live tail. Each server-sent event from
// /ui/decisions/stream becomes a row at the top of the table. Values are set
// as text (textContent), never parsed as HTML. No library, nothing fetched
// from elsewhere (the Content-Security-Policy allows this file only).
"use strict";
(function () {
  var rows = document.getElementById("tail-rows");
  var status = document.getElementById("tail-status");
  var sampled = document.getElementById("tail-sampled");
  if (!rows || !status || !window.EventSource) {
    if (status) status.textContent = "This browser has no server-sent events: use the search instead.";
    return;
  }
  var maxRows = 200;
  var seen = 0;
  function cell(tr, text, tag) {
    var td = document.createElement("td");
    var inner = tag ? document.createElement(tag) : td;
    inner.textContent = text;
    if (tag) td.appendChild(inner);
    tr.appendChild(td);
    return td;
  }
  var es = new EventSource("/ui/decisions/stream");
  es.addEventListener("open", function () {
    status.textContent = "Live: new decisions appear at the top as the replicas ship them.";
  });
  es.addEventListener("decision", function (ev) {
    var d = JSON.parse(ev.data);
    var tr = document.createElement("tr");
    tr.className = "new";
    cell(tr, d.time);
    var td = document.createElement("td");
    var a = document.createElement("a");
    a.href = "/ui/decisions/" + encodeURIComponent(d.id);
    a.textContent = d.id;
    td.appendChild(a);
    tr.appendChild(td);
    cell(tr, d.agent);
    cell(tr, d.request, "code");
    cell(tr, d.allowed ? "allowed" : "denied", d.allowed ? null : "strong");
    cell(tr, (d.reasons || []).join(", "));
    rows.insertBefore(tr, rows.firstChild);
    while (rows.rows.length > maxRows) rows.deleteRow(rows.rows.length - 1);
    seen++;
    status.textContent = "Live: " + seen + " new since this page opened.";
  });
  es.addEventListener("sampled", function (ev) {
    var s = JSON.parse(ev.data);
    sampled.hidden = false;
    sampled.textContent = "Sampling: " + s.arrived + " decisions arrived since the last update; the newest " + s.shown +
      " are shown. Search the decisions for all of them.";
  });
  es.addEventListener("end", function (ev) {
    es.close();
    status.textContent = "The live tail stopped: " + ev.data;
  });
  es.onerror = function () {
    status.textContent = es.readyState === EventSource.CLOSED ?
      "The live tail stopped (signed out, or too many tails open): reload the page to resume." :
      "Reconnecting…";
  };
})();
