// fairray dashboard: links the panels, fills the trial detail. Reads the JSON in #fairray-data; no network
// request except, when served, GET /state on the same origin to notice a changed sweep.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("fairray-data").textContent);
  var fronts = document.getElementById("fronts");
  var picker = document.getElementById("trial-picker");
  var selected = null, ringed;
  // Red (worse) to green (better); the "good" values are already 1 - value for minimised metrics.
  var GOOD_HIGH = [[0, "#d73027"], [0.5, "#fee08b"], [1, "#1a9850"]];
  var RING = "#f4a261";
  (fronts.data || []).forEach(function (t) {
    if (t.meta && t.meta.role === "selected" && t.marker && t.marker.line) RING = t.marker.line.color || RING;
  });

  // Where a trial is plotted: {panel: [x, y, x axis, y axis]}.
  function locate(trial) {
    var at = {};
    (fronts._fullData || []).forEach(function (t) {
      if (!t.meta || (t.meta.role !== "front" && t.meta.role !== "dominated")) return;
      var k = Array.prototype.indexOf.call(t.customdata || [], trial);
      if (k >= 0) at[t.meta.panel] = [t.x[k], t.y[k], t.xaxis, t.yaxis];
    });
    return at;
  }

  // Ring the trial in every panel (hover) or the selected one (no hover): one layout shape per panel, a circle
  // of fixed pixel size anchored at the point, so only the shapes are redrawn (a restyle would redraw every trace).
  function highlight(trial) {
    if (trial === ringed) return;
    ringed = trial;
    var at = trial ? locate(trial) : {};
    var shapes = Object.keys(at).map(function (panel) {
      var p = at[panel];
      return { type: "circle", xref: p[2], yref: p[3], xsizemode: "pixel", ysizemode: "pixel", xanchor: p[0],
               yanchor: p[1], x0: -9, x1: 9, y0: -9, y1: 9, line: { color: RING, width: 3 }, layer: "above" };
    });
    Plotly.relayout(fronts, { shapes: shapes });
    document.body.setAttribute("data-highlighted", trial ? trial + " " + shapes.length : "");
  }

  function cell(row, text, tag) {
    var c = document.createElement(tag || "td");
    c.textContent = text;
    row.appendChild(c);
    return c;
  }

  // A trial's heat table: the sweep's layout (columns, rows, metric keys, directions) and the trial's values;
  // rows the trial logged nothing for are left out.
  function heatTable(kind, values) {
    var layout = DATA.heat[kind], out = { x: layout.x, y: [], z: [], good: [], keys: [] };
    values.forEach(function (row, i) {
      if (!row || row.every(function (v) { return v === null; })) return;
      var low = layout.dirs[i] === "min";
      out.y.push(layout.y[i]); out.z.push(row); out.keys.push(layout.keys[i]);
      out.good.push(row.map(function (v) { return v === null ? null : (low ? 1 - v : v); }));
    });
    return out;
  }

  function heat(divId, table, title) {
    var div = document.getElementById(divId);
    if (!table || !table.y.length) { Plotly.purge(div); div.textContent = "no " + title + " logged"; return; }
    if (!div._fullLayout) div.textContent = "";  // the "none logged" note; a drawn plot is updated in place
    Plotly.react(div, [{
      type: "heatmap", x: table.x, y: table.y, z: table.good, zmin: 0, zmax: 1, colorscale: GOOD_HIGH,
      text: table.z.map(function (r) { return r.map(function (v) { return v === null ? "" : v.toFixed(3); }); }),
      texttemplate: "%{text}", customdata: table.keys, hovertemplate: "%{customdata} = %{text}<extra></extra>",
      colorbar: { thickness: 10, tickvals: [0, 1], ticktext: ["worse", "better"] }
    }], {
      title: { text: title, font: { size: 13 } }, height: 24 * table.y.length + 130,
      margin: { l: 150, r: 20, t: 40, b: 70 }, yaxis: { autorange: "reversed" }
    }, { displaylogo: false, responsive: true });
  }

  function curves(trial) {
    var div = document.getElementById("curves");
    var keys = Object.keys(trial.curves);
    if (!keys.length) { Plotly.purge(div); div.textContent = "no metric history logged"; return; }
    if (!div._fullLayout) div.textContent = "";  // the "none logged" note; a drawn plot is updated in place
    var cols = Math.min(3, keys.length), rows = Math.ceil(keys.length / cols);
    var traces = [], notes = [];
    keys.forEach(function (key, i) {
      var c = trial.curves[key], axis = i === 0 ? "" : String(i + 1);
      traces.push({ type: "scatter", mode: "lines+markers", x: c[0], y: c[1], name: key, xaxis: "x" + axis,
                    yaxis: "y" + axis, hovertemplate: key + " epoch %{x}: %{y:.4f}<extra></extra>" });
      notes.push({ text: key, showarrow: false, xref: "x" + axis + " domain", yref: "y" + axis + " domain",
                   x: 0.5, y: 1.12, font: { size: 11 } });
    });
    Plotly.react(div, traces, {
      grid: { rows: rows, columns: cols, pattern: "independent", ygap: 0.45 }, showlegend: false,
      annotations: notes, height: 210 * rows + 40, margin: { l: 50, r: 20, t: 30, b: 30 }
    }, { displaylogo: false, responsive: true });
  }

  function fill(id) {
    var trial = DATA.trials[id];
    document.getElementById("detail-empty").hidden = true;
    document.getElementById("detail-body").hidden = false;
    document.getElementById("detail-title").textContent = id + " (" + trial.method + ")";
    var link = document.getElementById("detail-mlflow");
    link.href = trial.url;
    link.textContent = "run " + trial.run_id + " in the MLflow UI";
    document.getElementById("detail-export").textContent = trial.export;
    var params = document.getElementById("detail-params");
    params.textContent = "";
    Object.keys(trial.params).sort().forEach(function (k) {
      var row = document.createElement("tr");
      cell(row, k, "th"); cell(row, trial.params[k]);
      params.appendChild(row);
    });
    var places = document.getElementById("detail-places");
    places.textContent = "";
    trial.places.forEach(function (p) {
      var li = document.createElement("li"); li.textContent = p; places.appendChild(li);
    });
    heat("heat-utility", heatTable("utility", trial.heat.utility), "utilities per group (rows: split/metric)");
    heat("heat-gap", heatTable("gap", trial.heat.gap), "gaps between groups, per stratum");
    curves(trial);
  }

  function select(id, then) {
    if (!id || !DATA.trials[id]) return;
    selected = id;
    highlight(id);
    picker.value = id;
    try { history.replaceState(null, "", "#trial=" + encodeURIComponent(id)); } catch (e) { /* file: URL */ }
    fill(id);
    if (then) then();
  }

  // The parallel coordinates (WebGL) are drawn when they scroll near the viewport, not while the page opens.
  function lazyParallel() {
    var div = document.getElementById("parallel"), fig = document.getElementById("parallel-figure");
    if (!div || !fig) return;
    var drawn = false;
    function draw() {
      if (drawn) return;
      drawn = true;
      var f = JSON.parse(fig.textContent);
      Plotly.newPlot(div, f.data, f.layout, { displaylogo: false, responsive: true }).then(function () {
        div.setAttribute("data-drawn", "1");
      });
    }
    if (!("IntersectionObserver" in window)) { draw(); return; }
    new IntersectionObserver(function (entries, obs) {
      if (entries.some(function (e) { return e.isIntersecting; })) { obs.disconnect(); draw(); }
    }, { rootMargin: "300px" }).observe(div);
  }

  Object.keys(DATA.trials).sort().forEach(function (id) {
    var o = document.createElement("option");
    o.value = id; o.textContent = id + (DATA.trials[id].pareto ? "  (Pareto-optimal)" : "");
    picker.appendChild(o);
  });
  picker.addEventListener("change", function () { select(picker.value); });
  fronts.on("plotly_hover", function (e) { var t = e.points[0].customdata; if (DATA.trials[t]) highlight(t); });
  fronts.on("plotly_unhover", function () { highlight(selected); });
  fronts.on("plotly_click", function (e) { select(e.points[0].customdata); });

  var m = /#trial=([^&]+)/.exec(location.hash);
  var first = m && DATA.trials[decodeURIComponent(m[1])] ? decodeURIComponent(m[1]) : DATA.first;
  highlight(first);
  lazyParallel();
  // the fronts are on screen first; the detail (heat tables, curves) is drawn in the next task
  setTimeout(function () {
    select(first, function () { document.body.setAttribute("data-ready", "1"); });
  }, 0);

  if (DATA.served) {
    setInterval(function () {
      fetch("state", { cache: "no-store" }).then(function (r) { return r.ok ? r.text() : null; }).then(function (s) {
        if (s && s.trim() !== DATA.state) document.getElementById("stale").hidden = false;
      }).catch(function () { /* server stopped: keep the page */ });
    }, DATA.poll_ms);
  }
})();
