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
  // Whether a decision is on the page: the stream sends what was stored
  // after the page's position, but a batch cut off by a dropped connection
  // is sent again after the reconnection.
  function shown(id) {
    for (var i = 0; i < rows.rows.length; i++) {
      if (rows.rows[i].getAttribute("data-id") === id) return true;
    }
    return false;
  }
  // The stream starts where the page's rows end (data-after), so nothing
  // stored in between is lost; on a reconnection the browser sends the last
  // event's id, which carries on from there.
  var after = rows.getAttribute("data-after");
  var es = new EventSource("/ui/decisions/stream" + (after ? "?after=" + encodeURIComponent(after) : ""));
  es.addEventListener("open", function () {
    status.textContent = "Live: new decisions appear at the top as the replicas ship them.";
  });
  es.addEventListener("decision", function (ev) {
    var d = JSON.parse(ev.data);
    if (shown(d.id)) return;
    var tr = document.createElement("tr");
    tr.className = "new";
    tr.setAttribute("data-id", d.id);
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
      "The live tail stopped (signed out, too many tails open, or the page is too old): reload the page to resume." :
      "Reconnecting…";
  };
})();
