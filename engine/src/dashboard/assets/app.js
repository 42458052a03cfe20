// Switchboard live dashboard: reads the engine's snapshot stream (server-sent events read
// through fetch, so the HTTP token travels as an Authorization header) and fills the page.
// No external asset; works offline.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "switchboard.token";
  // A token in the fragment (`/#token=…`) is never sent to the server; keep it for this tab
  // and take it out of the address bar.
  const frag = new URLSearchParams(location.hash.slice(1));
  if (frag.get("token")) {
    sessionStorage.setItem(TOKEN_KEY, frag.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  // Service-level target for colouring (share answered in time), `?sl=0.8` by default.
  const slTarget = Number(new URLSearchParams(location.search).get("sl") || "0.8");

  const fmtInt = (n) => (n == null ? "—" : Math.round(n).toLocaleString("en-US"));
  const fmtPct = (r) => (r == null ? "—" : (r * 100).toFixed(1) + "%");
  const fmtSecs = (ms) => (ms == null ? "—" : (ms / 1000).toFixed(1) + " s");
  const fmtBytes = (b) => {
    if (b == null) return "—";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return (i ? b.toFixed(1) : b) + " " + u[i];
  };
  const set = (id, text) => { const e = $(id); if (e && e.textContent !== String(text)) e.textContent = text; };
  const cell = (tr, id, text, cls) => {
    const td = document.createElement("td");
    td.id = id; td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  };

  function renderQueues(queues) {
    const body = $("queues-body");
    const rows = document.createDocumentFragment();
    for (const q of queues) {
      const id = "queue-" + q.queue;
      const tr = document.createElement("tr");
      tr.id = id;
      tr.dataset.queue = q.queue;
      cell(tr, id + "-name", q.name ? q.name + " (" + q.queue + ")" : String(q.queue));
      cell(tr, id + "-waiting", fmtInt(q.waiting));
      cell(tr, id + "-longest", fmtSecs(q.longest_wait_ms));
      const sl = q.service_level;
      const within = q.sl_threshold_ms != null ? " in " + (q.sl_threshold_ms / 1000) + " s" : "";
      cell(tr, id + "-sl", (sl == null ? "—" : fmtPct(sl)) + within,
        sl == null ? "" : sl >= slTarget ? "ok" : "miss");
      cell(tr, id + "-abandoned", fmtInt(q.abandoned));
      const a = q.agents || {};
      for (const k of ["idle", "reserved", "busy", "wrap_up", "away", "offline"]) {
        cell(tr, id + "-agents-" + k, fmtInt(a[k]));
      }
      rows.appendChild(tr);
    }
    body.replaceChildren(rows);
  }

  function renderWorkers(workers) {
    const box = $("workers");
    const rows = document.createDocumentFragment();
    for (const w of workers) {
      const row = document.createElement("div");
      row.className = "worker";
      const name = document.createElement("span");
      name.textContent = "core " + w.index;
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("i");
      fill.style.width = Math.min(100, w.load * 100).toFixed(1) + "%";
      if (w.load > 0.8) fill.className = "hot";
      bar.appendChild(fill);
      const pct = document.createElement("span");
      pct.id = "worker-" + w.index + "-load";
      pct.textContent = (w.load * 100).toFixed(1) + "%";
      row.append(name, bar, pct);
      rows.appendChild(row);
    }
    box.replaceChildren(rows);
  }

  function renderWorst(worst) {
    const body = $("worst-body");
    const rows = document.createDocumentFragment();
    worst.forEach((c, i) => {
      const tr = document.createElement("tr");
      tr.id = "worst-" + i;
      cell(tr, "worst-" + i + "-call", c.call);
      cell(tr, "worst-" + i + "-mos", c.mos == null ? "—" : c.mos.toFixed(2));
      cell(tr, "worst-" + i + "-loss", fmtPct(c.loss));
      cell(tr, "worst-" + i + "-jitter", c.jitter_ms.toFixed(1) + " ms");
      rows.appendChild(tr);
    });
    if (!worst.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 4; td.className = "empty"; td.id = "worst-none";
      td.textContent = "no call with media in the sample";
      tr.appendChild(td);
      rows.appendChild(tr);
    }
    body.replaceChildren(rows);
  }

  function render(s) {
    const e = s.engine || {};
    renderQueues(s.queues || []);
    const ag = s.agents || {};
    for (const k of ["idle", "reserved", "busy", "wrap_up", "away", "offline"]) set("agents-" + k, fmtInt(ag[k]));
    set("tasks-live", fmtInt(s.tasks_live));
    const c = s.calls || {};
    set("calls-active", fmtInt(c.active));
    set("calls-legs", fmtInt(e.legs));
    set("calls-sampled", fmtInt(c.sampled));
    const q = c.quality || {};
    for (const k of ["good", "fair", "poor", "bad", "no_media"]) set("quality-" + k, fmtInt(q[k]));
    renderWorst(c.worst || []);
    set("engine-rx-pps", fmtInt(e.rx_pps));
    set("engine-relayed-pps", fmtInt(e.relayed_pps));
    set("engine-drops", fmtInt(e.drops));
    set("engine-drops-ps", fmtInt(e.drops_per_s));
    renderWorkers(e.workers || []);
    const r = s.recordings || {};
    set("rec-active", fmtInt(r.active));
    set("rec-today", fmtInt(r.today));
    set("rec-bytes", fmtBytes(r.bytes));
    const t = $("updated");
    t.dateTime = new Date(s.at).toISOString();
    t.textContent = new Date(s.at).toLocaleTimeString();
    document.body.dataset.at = s.at;
  }

  function status(text, cls) {
    const el = $("status");
    el.textContent = text;
    el.className = "status " + cls;
  }

  function askToken() {
    status("token needed", "error");
    const form = $("token-form");
    form.hidden = false;
    form.onsubmit = (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
      form.hidden = true;
      connect();
    };
  }

  async function stream() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { Accept: "text/event-stream" };
    if (token) headers.Authorization = "Bearer " + token;
    const res = await fetch("dashboard/events", { headers, cache: "no-store" });
    if (res.status === 401 || res.status === 403) return "auth";
    if (!res.ok || !res.body) throw new Error("HTTP " + res.status);
    status("live", "live");
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return "closed";
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const chunk = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let data = "";
        for (const line of chunk.split("\n")) {
          if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
        }
        if (data) {
          try { render(JSON.parse(data)); } catch (err) { console.error(err); }
        }
      }
    }
  }

  async function connect() {
    for (;;) {
      let why;
      try { why = await stream(); } catch (err) { why = "error"; }
      if (why === "auth") { askToken(); return; }
      status("reconnecting…", "error");
      await new Promise((r) => setTimeout(r, 2000));
    }
  }

  connect();
})();
