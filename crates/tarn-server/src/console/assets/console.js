// tarn console: the editor's requests, result table and charts, the dashboard and the
// pipeline page. Charts are figures the server builds (plotly's types); this only hands them
// to Plotly.newPlot.
"use strict";
const tarnConsole = (() => {
  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    return answer(response);
  }

  async function get(url) {
    return answer(await fetch(url, { credentials: "same-origin" }));
  }

  async function answer(response) {
    const data = await response.json().catch(() => ({ error: response.statusText }));
    if (response.status === 401) {
      const here = location.pathname + location.search;
      location.href = "/console/login?message=" + encodeURIComponent(data.error || "log in again") +
        "&next=" + encodeURIComponent(here);
      throw new Error(data.error);
    }
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  function table(data) {
    const t = el("table", null, "grid");
    t.id = "result-table";
    const head = t.createTHead().insertRow();
    data.columns.forEach((c, i) => {
      const th = el("th", c);
      th.title = data.types[i];
      head.appendChild(th);
    });
    const body = t.createTBody();
    for (const row of data.rows) {
      const tr = body.insertRow();
      for (const v of row) tr.appendChild(v === null ? el("td", "NULL", "null") : el("td", v));
    }
    return t;
  }

  function fill(select, columns, preferred) {
    select.replaceChildren(...columns.map((c) => { const o = el("option", c); o.value = c; return o; }));
    if (columns.length > preferred) select.value = columns[preferred];
  }

  function draw(target, figure) {
    return Plotly.newPlot(target, figure.data, figure.layout || {}, { responsive: true, displaylogo: false });
  }

  function editor() {
    const sql = document.getElementById("sql");
    const status = document.getElementById("status");
    const result = document.getElementById("result");
    const controls = document.getElementById("chart-controls");
    const chart = document.getElementById("chart");
    const saved = document.getElementById("saved");
    const chartRequest = () => ({
      sql: sql.value,
      kind: document.getElementById("chart-kind").value,
      x: document.getElementById("chart-x").value,
      y: document.getElementById("chart-y").value,
      title: document.getElementById("chart-name").value,
    });
    async function run() {
      status.textContent = "Running…";
      status.className = "status";
      result.replaceChildren();
      try {
        const data = await post("/console/api/query", { sql: sql.value });
        if (data.command !== undefined) {
          status.textContent = data.command + " (" + data.elapsed_ms.toFixed(0) + " ms)";
          controls.hidden = true;
          return;
        }
        status.textContent = data.row_count + " rows" + (data.truncated ? ", first " + data.rows.length + " shown" : "") +
          " (" + data.elapsed_ms.toFixed(0) + " ms)";
        result.appendChild(table(data));
        fill(document.getElementById("chart-x"), data.columns, 0);
        fill(document.getElementById("chart-y"), data.columns, 1);
        controls.hidden = false;
      } catch (e) {
        status.textContent = e.message;
        status.className = "status error";
      }
    }
    document.getElementById("run").addEventListener("click", run);
    sql.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); } });
    document.getElementById("download-form").addEventListener("submit", () => {
      document.getElementById("download-sql").value = sql.value;
    });
    document.getElementById("draw").addEventListener("click", async () => {
      try {
        await draw(chart, await post("/console/api/chart", chartRequest()));
        chart.dataset.drawn = "true";
      } catch (e) {
        status.textContent = e.message;
        status.className = "status error";
      }
    });
    async function save(kind, dashboard) {
      const r = chartRequest();
      const name = r.title || (kind === "table" ? "query" : r.kind + " of " + r.y);
      try {
        const done = await post("/console/api/charts", { name, sql: r.sql, kind: kind || r.kind, x: r.x, y: r.y, dashboard });
        saved.textContent = "Saved “" + name + "”.";
        saved.dataset.id = done.id;
      } catch (e) {
        saved.textContent = e.message;
      }
    }
    document.getElementById("save-chart").addEventListener("click", () => save(null, true));
    document.getElementById("save-query").addEventListener("click", () => save("table", false));
  }

  function dashboard() {
    for (const card of document.querySelectorAll("[data-chart]")) {
      const id = card.dataset.chart;
      const target = document.getElementById("chart-" + id);
      get("/console/api/charts/" + encodeURIComponent(id) + "/figure")
        .then((figure) => draw(target, figure).then(() => { target.dataset.drawn = "true"; }))
        .catch((e) => { target.replaceChildren(el("p", e.message, "error")); });
    }
  }

  function pipeline() {
    const state = document.querySelector("#pipeline-state tbody");
    const tables = document.querySelector("#pipeline-tables tbody");
    const chart = document.getElementById("pipeline-chart");
    const times = [], lag = [], rate = [];
    let drawn = false;
    async function tick() {
      let data;
      try { data = await get("/console/api/pipeline"); } catch (e) { return; }
      const cdc = data.cdc;
      if (!cdc) {
        state.replaceChildren(rowOf("state", data.message));
        return;
      }
      state.replaceChildren(
        rowOf("state", cdc.state), rowOf("pipeline", cdc.pipeline), rowOf("source", cdc.source),
        rowOf("changes applied", cdc.events_total), rowOf("changes per second", (cdc.events_per_second || 0).toFixed(1)),
        rowOf("lag (s)", cdc.lag_seconds === null ? "" : cdc.lag_seconds.toFixed(2)),
        rowOf("pending changes", cdc.pending_events), rowOf("acknowledged", JSON.stringify(cdc.acknowledged)),
      );
      const rows = [];
      const list = Array.isArray(cdc.tables) ? cdc.tables
        : Object.entries(cdc.tables || {}).map(([name, t]) => Object.assign({ table: name }, t));
      for (const t of list) {
        const tr = document.createElement("tr");
        tr.append(el("td", t.table), el("td", t.stopped ? "stopped: " + t.stopped : "running"),
          el("td", t.changes), el("td", t.commits), el("td", t.position ? JSON.stringify(t.position) : ""));
        rows.push(tr);
      }
      tables.replaceChildren(...rows);
      times.push(new Date());
      lag.push(cdc.lag_seconds);
      rate.push(cdc.events_per_second);
      if (times.length > 300) { times.shift(); lag.shift(); rate.shift(); }
      const data2 = [
        // Copies: Plotly.react redraws what changed by reference.
        { x: times.slice(), y: lag.slice(), name: "lag (s)", mode: "lines+markers", type: "scatter" },
        { x: times.slice(), y: rate.slice(), name: "changes/s", mode: "lines+markers", type: "scatter", yaxis: "y2" },
      ];
      const layout = { yaxis: { title: { text: "lag (s)" } }, yaxis2: { title: { text: "changes/s" }, overlaying: "y", side: "right" } };
      if (drawn) Plotly.react(chart, data2, layout); else { Plotly.newPlot(chart, data2, layout, { displaylogo: false }); drawn = true; chart.dataset.drawn = "true"; }
      chart.dataset.points = String(times.length);
    }
    function rowOf(k, v) {
      const tr = document.createElement("tr");
      tr.append(el("th", k), el("td", v === undefined || v === null ? "" : String(v)));
      return tr;
    }
    tick();
    setInterval(tick, 2000);
  }

  // A pipeline's history: the figure the server built from the lake's commits, in the page.
  function history() {
    const target = document.getElementById("history-chart");
    const figure = JSON.parse(document.getElementById("history-figure").textContent);
    draw(target, figure).then(() => { target.dataset.drawn = "true"; });
  }

  // The catalog's filter box.
  document.addEventListener("input", (e) => {
    if (e.target.id !== "table-filter") return;
    const q = e.target.value.toLowerCase();
    for (const li of document.querySelectorAll("[data-table]")) li.hidden = !li.dataset.table.toLowerCase().includes(q);
  });

  return { editor, dashboard, pipeline, history };
})();
