// cutover's progress page: polls the runner's API every second and draws it. Charts by uPlot
// (MIT, served beside this file). No framework, nothing loaded from elsewhere.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const needsToken = document.querySelector('meta[name="cutover-auth"]').content === "bearer";
  const TOKEN_KEY = "cutover-api-token";
  const STAGE_COLORS = ["#2f6fde", "#9f7aea", "#b7791f", "#c53030"];

  // Everything the page knows, also for tests and the curious (`window.cutoverPage`).
  const page = {
    progress: null,
    copy: null,
    history: null,
    charts: {},
    windowSeconds: 900,
    failures: 0,
    lastError: null,
    unconfirmed: null,
    nsRates: {},
  };
  window.cutoverPage = page;
  let token = needsToken ? sessionStorage.getItem(TOKEN_KEY) || "" : "";

  class AuthError extends Error {}

  // ---- the API -------------------------------------------------------------------------
  async function api(method, path, body) {
    const headers = {};
    if (needsToken) headers["Authorization"] = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, {
      method,
      headers,
      cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try {
      data = await r.json();
    } catch (_) {
      data = null;
    }
    if (r.status === 401) {
      throw new AuthError((data && data.error) || "the token was refused");
    }
    if (!r.ok) {
      const e = new Error((data && data.error) || r.status + " " + r.statusText);
      e.data = data;
      throw e;
    }
    return data;
  }

  // ---- small helpers -------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }
  function bytes(n) {
    if (n === null || n === undefined || !isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    let v = Math.abs(n);
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return (n < 0 ? "-" : "") + (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
  }
  function num(n) {
    if (n === null || n === undefined || !isFinite(n)) return "–";
    return Math.round(n).toLocaleString("en-US");
  }
  function dur(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    if (s < 10) return s.toFixed(1) + "s";
    s = Math.round(s);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    if (h > 0) return h + "h " + String(m).padStart(2, "0") + "m";
    if (m > 0) return m + "m " + String(sec).padStart(2, "0") + "s";
    return sec + "s";
  }
  function pct(f) {
    return (Math.max(0, Math.min(1, f)) * 100).toFixed(1) + "%";
  }
  function setText(id, text) {
    const e = $(id);
    if (e.textContent !== text) e.textContent = text;
  }
  // The mean of the last `n` non-null values of a history column.
  function recentMean(col, n) {
    let sum = 0;
    let k = 0;
    for (let i = col.length - 1; i >= 0 && k < n; i--) {
      if (col[i] !== null) {
        sum += col[i];
        k++;
      }
    }
    return k ? sum / k : null;
  }

  // ---- the token -----------------------------------------------------------------------
  function askToken(message) {
    const d = $("token-dialog");
    $("token-error").hidden = !message;
    $("token-error").textContent = message || "";
    if (!d.open) d.showModal();
    $("token-input").focus();
  }
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token-input").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-dialog").close();
    tick();
  });
  $("token-button").addEventListener("click", () => askToken(""));

  // ---- actions -------------------------------------------------------------------------
  async function act(path, body) {
    try {
      const r = await api("POST", path, body);
      flash(r.message || "done", "info");
    } catch (e) {
      if (e instanceof AuthError) askToken(e.message);
      else flash(e.message, "bad");
    }
    tick();
  }
  let flashed = null;
  function flash(text, kind) {
    flashed = { text, kind, until: Date.now() + 8000 };
    renderAlerts();
  }
  $("pause").addEventListener("click", () => act("/api/v1/pause"));
  $("resume").addEventListener("click", () => act("/api/v1/resume"));
  $("approve").addEventListener("click", () => {
    const p = page.progress;
    const step = waitingCommit(p);
    $("approve-text").textContent =
      "Approve the commit at step " + (step === null ? "?" : step) + " of plan `" + (p ? p.plan : "?") +
      "`? It blocks user writes on the source, applies the last changes to the destination and switches over.";
    $("approve-dialog").showModal();
    $("approve-cancel").focus();
  });
  $("approve-cancel").addEventListener("click", (ev) => {
    ev.preventDefault();
    $("approve-dialog").close();
  });
  $("approve-confirm").addEventListener("click", (ev) => {
    ev.preventDefault();
    $("approve-dialog").close();
    const body = {};
    const step = waitingCommit(page.progress);
    if (step !== null) body.step = step;
    const note = $("approve-note").value.trim();
    body.note = note || "approved on the progress page";
    act("/api/v1/approve", body);
  });
  $("window-select").addEventListener("change", (ev) => {
    page.windowSeconds = Number(ev.target.value);
    drawCharts();
  });

  function waitingCommit(p) {
    if (!p) return null;
    const s = p.steps.find((s) => s.kind === "commit" && s.status === "running");
    return s ? s.index : null;
  }

  // ---- rendering -----------------------------------------------------------------------
  function renderProgress(p) {
    setText("plan", p.plan);
    const badge = $("state");
    badge.textContent = p.state;
    badge.className = "badge s-" + p.state;
    setText("phase", p.phase);
    document.title = p.plan + " · " + p.state + " · cutover";
    setText("lag", p.lag_seconds === null ? "–" : dur(p.lag_seconds));
    setText("events", num(p.events_applied));
    setText("can-commit", p.can_commit ? "yes" : "no");
    const phases = (p.write_blocked_window_phases || []).map(function (x) { return x.phase + " " + x.ms + " ms"; }).join(", ");
    setText("window", p.write_blocked_window_ms === null ? "–" : (p.write_blocked_window_ms / 1000).toFixed(3) + "s");
    setText("window-phases", p.write_blocked_window_ms === null ? "" : phases);
    const oplog = p.insight ? p.insight.oplog_remaining_seconds : null;
    setText("oplog", oplog === null || oplog === undefined ? "–" : dur(oplog));
    setText(
      "runner",
      p.runner ? p.runner + (p.epoch !== null ? " · epoch " + p.epoch : "") : "none: no `cutover run` holds this plan"
    );
    setText("direction", p.direction.source + "  →  " + p.direction.destination);
    setText("updated", p.updated ? "status written " + new Date(p.updated).toLocaleTimeString() : "–");

    const waiting = p.phase === "waiting for approval" && waitingCommit(p) !== null;
    $("approve").hidden = !waiting;
    // A commit's drain ignores a pause: no Pause button while it runs.
    $("pause").hidden = !!p.paused || p.state === "COMMITTED" || p.state === "COMMITTING" || !p.runner;
    $("resume").hidden = !p.paused;
    $("token-button").hidden = !needsToken;

    // Steps as a timeline.
    const ol = $("steps");
    ol.replaceChildren(
      ...p.steps.map((s) =>
        el(
          "li",
          { class: s.status, "data-status": s.status, title: s.error || "" },
          el("div", { class: "kind" }, s.index + " · " + s.kind),
          el("div", { class: "meta" }, s.status + (s.seconds !== null ? " · " + dur(s.seconds) : "")),
          s.error ? el("div", { class: "meta error" }, s.error) : null
        )
      )
    );

    // The copy, overall.
    const c = p.collection_copy;
    const total = c.estimated_total_bytes;
    // Done is done: the estimate (the source's size before the copy) is only an estimate.
    const frac = c.done ? 1 : total > 0 ? Math.min(1, c.estimated_copied_bytes / total) : 0;
    const fill = $("copy-fill");
    fill.style.width = pct(frac);
    fill.dataset.fraction = frac.toFixed(4);
    fill.classList.toggle("done", frac >= 1);
    setText("copy-percent", c.done || total > 0 ? pct(frac) : "–");
    const h = page.history;
    const rate = h ? recentMean(h.copy_bytes_per_second, 10) : null;
    const copying = p.phase === "copying";
    const eta = copying && rate > 0 && total > 0 ? (total - c.estimated_copied_bytes) / rate : null;
    setText(
      "copy-text",
      bytes(c.estimated_copied_bytes) + " of ~" + bytes(total) + " · " + num(c.copied_documents) + " documents" +
        (copying ? " · " + (rate === null ? "–" : bytes(rate) + "/s") + " · ETA " + dur(eta) : "") +
        (c.events_applied || c.held_events ? " · " + num(c.events_applied) + " events applied during the copy" : "")
    );
    renderAlerts();
  }

  function renderAlerts() {
    const p = page.progress;
    const box = $("alerts");
    const items = [];
    if (page.failures > 2) {
      items.push(
        el("div", { class: "alert bad" }, "The runner does not answer (" + (page.lastError || "?") +
          "): the run may have ended, or its network is down. The page keeps trying.")
      );
    }
    const u = (p && p.lease_unconfirmed) || page.unconfirmed;
    if (u) {
      items.push(
        el("div", { class: "alert bad", id: "lease-unconfirmed" },
          el("b", {}, "Lease unconfirmed"),
          ": the state store has not confirmed the lease of " + u.holder + " (epoch " + u.epoch + ") since " +
            (u.last_renewed || "?") + (u.last_error ? " (last error: " + u.last_error + ")" : "") +
            ". Every write waits; the run carries on by itself when the store answers, unless another runner took the plan. It stops trying at " +
            (u.gives_up || "?") + ".")
      );
    }
    if (flashed && flashed.until > Date.now()) {
      items.push(el("div", { class: "alert " + flashed.kind }, flashed.text));
    }
    if (p) {
      for (const b of p.blocked) {
        items.push(
          el(
            "div",
            { class: "alert bad blocked", "data-cluster": b.cluster },
            "User writes on the ",
            el("b", {}, b.cluster),
            " cluster are blocked by cutover. Release: ",
            el("code", {}, b.release),
            b.continue_with ? el("span", {}, " · no runner is working to release it: ", el("code", {}, b.continue_with), " continues the migration") : null
          )
        );
      }
      if (p.paused) {
        const o = p.paused.oplog_remaining_seconds;
        items.push(
          el("div", { class: "alert" }, "Paused since " + (p.paused.since || "?") + " by " + (p.paused.by || "?") +
            "; the source's oplog allows the pause to last " + (o === null || o === undefined ? "an unknown time" : "about " + dur(o)) + ".")
        );
      }
      if (p.phase === "waiting for approval") {
        items.push(el("div", { class: "alert info" }, "The commit waits for approval (the Approve button, or ", el("code", {}, "cutover approve"), ")."));
      }
      if (p.reconnecting) items.push(el("div", { class: "alert" }, "Reconnecting: " + p.reconnecting));
      if (p.last_error) items.push(el("div", { class: "alert bad", id: "last-error" }, "Last error: " + p.last_error));
      if (!p.runner) items.push(el("div", { class: "alert" }, "No `cutover run` holds this plan."));
    }
    box.replaceChildren(...items);
  }

  function renderCopy(c) {
    const tbody = $("namespaces").tBodies[0];
    const now = Date.now() / 1000;
    const rows = c.namespaces.map((n) => {
      const est = n.estimated_bytes;
      const frac = n.done ? 1 : est > 0 && n.bytes !== null ? Math.min(1, n.bytes / est) : n.ranges > 0 ? n.ranges_done / n.ranges : 0;
      // The rate from this table's previous reading (smoothed).
      const prev = page.nsRates[n.namespace];
      let rate = prev ? prev.rate : null;
      if (prev && n.bytes !== null && now > prev.t) {
        const r = Math.max(0, (n.bytes - prev.bytes) / (now - prev.t));
        rate = rate === null ? r : 0.5 * rate + 0.5 * r;
      }
      page.nsRates[n.namespace] = { t: now, bytes: n.bytes, rate };
      const eta = !n.done && rate > 0 && est > 0 ? Math.max(0, (est - n.bytes) / rate) : null;
      const fill = el("div", { class: "fill" + (n.done ? " done" : ""), "data-fraction": frac.toFixed(4) });
      fill.style.width = pct(frac);
      return el(
        "tr",
        { "data-namespace": n.namespace },
        el("td", { class: "mono" }, n.namespace),
        el("td", {}, el("div", { class: "bar-row" }, el("div", { class: "bar" }, fill), el("span", { class: "pct" }, pct(frac)))),
        el("td", {}, num(n.documents) + (n.estimated_documents !== null ? " / " + num(n.estimated_documents) : "")),
        el("td", {}, bytes(n.bytes) + (est !== null ? " / " + bytes(est) : "")),
        el("td", {}, n.done ? "done" : rate === null ? "–" : bytes(rate) + "/s"),
        el("td", {}, n.done ? "–" : dur(eta))
      );
    });
    tbody.replaceChildren(...rows);
  }

  // ---- charts --------------------------------------------------------------------------
  const SERIES = {
    lag: [{ label: "lag (s)", key: "lag_seconds", stroke: "#c53030", fill: "rgba(197,48,48,.08)" }],
    events: [
      { label: "read/s", key: "events_read_per_second", stroke: "#2f6fde" },
      { label: "applied/s", key: "events_applied_per_second", stroke: "#1f8a4c" },
    ],
    copy: [{ label: "bytes/s", key: "copy_bytes_per_second", stroke: "#2f6fde", fill: "rgba(47,111,222,.08)", fmt: bytes }],
    busy: [], // one series per stage, from the history's `busy`
  };

  function mergeHistory(h) {
    if (!page.history) {
      page.history = h;
      return;
    }
    const old = page.history;
    for (const k of Object.keys(h)) {
      if (Array.isArray(h[k]) && Array.isArray(old[k]) && k !== "busy") old[k].push(...h[k]);
    }
    for (const s of h.busy) {
      const o = old.busy.find((x) => x.stage === s.stage);
      if (o) o.busy.push(...s.busy);
    }
    // Keep what the runner keeps.
    const cut = old.t.length ? old.t[old.t.length - 1] - h.kept_seconds : 0;
    let drop = 0;
    while (drop < old.t.length && old.t[drop] <= cut) drop++;
    if (drop > 0) {
      for (const k of Object.keys(old)) if (Array.isArray(old[k]) && k !== "busy") old[k].splice(0, drop);
      for (const s of old.busy) s.busy.splice(0, drop);
    }
  }

  function chartWidth(div) {
    return Math.max(280, div.clientWidth || 400);
  }

  // `max`: a fixed top (percentages); `floor`: the least top, so a quiet chart shows a flat
  // line at zero rather than ticks of fractions of a byte.
  function makeChart(name, series, fmt, max, floor) {
    const div = $("chart-" + name);
    const opts = {
      width: chartWidth(div),
      height: 200,
      legend: { show: true },
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: { time: true },
        y: max ? { range: [0, max] } : { range: (u, lo, hi) => [0, Math.max(hi * 1.1, floor || 1)] },
      },
      // The value axis as wide as its longest label ("976.6 KiB" was cut at a fixed 70 px).
      axes: [{}, {
        size: (u, vals) => Math.max(50, ...(vals || []).map((v) => String(v).length * 7 + 24)),
        values: (u, vals) => vals.map((v) => (fmt ? fmt(v) : String(v))),
      }],
      series: [{}].concat(
        series.map((s) => ({
          label: s.label,
          stroke: s.stroke,
          fill: s.fill,
          width: 1.5,
          spanGaps: false,
          points: { show: false },
          value: (u, v) => (v === null ? "–" : fmt ? fmt(v) : v.toFixed(2)),
        }))
      ),
    };
    const chart = new uPlot(opts, [[]].concat(series.map(() => [])), div);
    page.charts[name] = chart;
    return chart;
  }

  function windowed(h) {
    const from = page.windowSeconds > 0 && h.t.length ? h.t[h.t.length - 1] - page.windowSeconds : -Infinity;
    let i = 0;
    while (i < h.t.length && h.t[i] < from) i++;
    return i;
  }

  function drawCharts() {
    const h = page.history;
    if (!h || typeof uPlot === "undefined") return;
    if (!page.charts.lag) {
      makeChart("lag", SERIES.lag, (v) => dur(v), null, 1);
      makeChart("events", SERIES.events, (v) => (v < 10 ? String(+v.toFixed(1)) : num(v)), null, 10);
      makeChart("copy", SERIES.copy, bytes, null, 1024 * 1024);
      SERIES.busy = h.busy.map((s, i) => ({ label: s.stage, stroke: STAGE_COLORS[i % STAGE_COLORS.length] }));
      makeChart("busy", SERIES.busy, (v) => Math.round(v) + "%", 100);
    }
    const from = windowed(h);
    const t = h.t.slice(from);
    const col = (k) => h[k].slice(from);
    page.charts.lag.setData([t, col("lag_seconds")]);
    page.charts.events.setData([t, col("events_read_per_second"), col("events_applied_per_second")]);
    page.charts.copy.setData([t, col("copy_bytes_per_second")]);
    page.charts.busy.setData([t].concat(h.busy.map((s) => s.busy.slice(from).map((v) => (v === null ? null : v * 100)))));
    // The busiest stage over the last 10 seconds.
    const counts = {};
    for (const s of h.busiest_stage.slice(-10)) if (s) counts[s] = (counts[s] || 0) + 1;
    const top = Object.entries(counts).sort((a, b) => b[1] - a[1])[0];
    setText("busiest", top ? top[0] : "none");
  }

  window.addEventListener("resize", () => {
    for (const [name, c] of Object.entries(page.charts)) {
      c.setSize({ width: chartWidth($("chart-" + name)), height: 200 });
    }
  });

  // ---- the loop ------------------------------------------------------------------------
  let ticks = 0;
  let busy = false;
  async function tick() {
    if (busy || $("token-dialog").open) return;
    if (needsToken && !token) {
      askToken("");
      return;
    }
    busy = true;
    try {
      const since = page.history && page.history.t.length ? page.history.t[page.history.t.length - 1] : null;
      const [p, h] = await Promise.all([
        api("GET", "/api/v1/progress"),
        api("GET", "/api/v1/history" + (since === null ? "" : "?since=" + since)),
      ]);
      page.progress = p;
      mergeHistory(h);
      // The per-namespace table: every second while a namespace copies, else every 10 s.
      const copying = !page.copy || page.copy.namespaces.length === 0 || page.copy.namespaces.some((n) => !n.done);
      if (copying || ticks % 10 === 0) {
        page.copy = await api("GET", "/api/v1/copy");
        renderCopy(page.copy);
      }
      ticks++;
      page.failures = 0;
      page.unconfirmed = null;
      renderProgress(p);
      drawCharts();
      $("conn").textContent = "live";
      $("conn").classList.remove("down");
    } catch (e) {
      if (e instanceof AuthError) {
        askToken(e.message);
      } else {
        page.failures++;
        page.lastError = e.message;
        // The runner answers but its state store does not: it says what it does about it.
        page.unconfirmed = (e.data && e.data.lease_unconfirmed) || null;
        $("conn").textContent = "unreachable";
        $("conn").classList.add("down");
        renderAlerts();
      }
    } finally {
      busy = false;
    }
  }

  tick();
  setInterval(tick, 1000);
})();
