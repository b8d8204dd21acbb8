// app.js draws micro's dashboard: it reads GET /status once for the first paint, then
// follows GET /ui/events, whose every message is a whole status snapshot, and updates the
// page in place. A failed call's button loads GET /traces?id=ID and draws its spans as a
// waterfall.
//
// Everything a snapshot or a trace holds came, at least partly, from requests: service
// names, endpoints, node IDs, error texts, states. So this script puts such data in the
// page only as text (textContent) and in data-* attributes (setAttribute), builds no markup
// from strings, builds no selector from data, and escapes what goes into a URL.
"use strict";

(() => {
  const DASH = "\u2014";
  const STALE_MS = 5000; // no message for this long while "connected" means disconnected
  const RETRY_MS = 3000; // a closed event stream is reopened after this long

  const byId = (id) => document.getElementById(id);

  // --- small DOM helpers -------------------------------------------------------------

  // h creates an element with a class and text.
  function h(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // td creates a table cell with data-col="col" and a class.
  function td(col, cls) {
    const e = h("td", cls);
    if (col) e.setAttribute("data-col", col);
    return e;
  }

  // setText sets e's text, only when it changed (no needless layout).
  function setText(e, text) {
    const s = String(text);
    if (e.textContent !== s) e.textContent = s;
  }

  // mark sets or clears one class of e.
  function mark(e, cls, on) {
    if (e.classList.contains(cls) !== Boolean(on)) e.classList.toggle(cls, Boolean(on));
  }

  // setData sets a data-* attribute to a value that may come from a request.
  function setData(e, name, value) {
    const s = String(value);
    if (e.getAttribute("data-" + name) !== s) e.setAttribute("data-" + name, s);
  }

  const arr = (x) => (Array.isArray(x) ? x.filter((v) => v !== null && typeof v === "object") : []);
  const str = (x) => (x === null || x === undefined ? "" : String(x));
  const num = (x) => (typeof x === "number" && Number.isFinite(x) ? x : null);

  // keyOf and partsOf remember, per element that sync made, its key and its parts.
  const keyOf = new WeakMap();
  const partsOf = new WeakMap();

  // sync makes parent's children match items, in order: it keeps the element of each key
  // that was there before and updates it, creates the missing ones, and drops the rest.
  // Keys are compared as strings, never used as selectors.
  function sync(parent, items, key, create, update) {
    const old = new Map();
    for (const c of parent.children) {
      const k = keyOf.get(c);
      if (k !== undefined && !old.has(k)) old.set(k, c);
    }
    let i = 0;
    for (const item of items) {
      const k = key(item);
      let node = old.get(k);
      if (node) {
        old.delete(k); // a repeated key gets an element of its own
      } else {
        node = create(item);
        keyOf.set(node, k);
      }
      update(node, item);
      const at = parent.children[i] || null;
      if (at !== node) parent.insertBefore(node, at);
      i++;
    }
    while (parent.children.length > i) parent.lastElementChild.remove();
  }

  // --- formats ---------------------------------------------------------------------------

  // fmtNum formats a rate, a latency or a score compactly.
  function fmtNum(x) {
    const n = num(x);
    if (n === null) return DASH;
    const a = Math.abs(n);
    if (Number.isInteger(n)) return String(n);
    if (a < 10) return n.toFixed(2);
    if (a < 100) return n.toFixed(1);
    return Math.round(n).toString();
  }

  // fmtPct formats a share from 0 to 1 as a percentage, rounded down so that 99.999%
  // does not show as 100.
  function fmtPct(x) {
    const n = num(x);
    if (n === null) return DASH;
    if (n >= 1) return "100";
    return (Math.floor(n * 10000) / 100).toFixed(2);
  }

  const fmtCount = (x) => (num(x) === null ? "0" : String(x));

  // parseTime parses an RFC 3339 time with up to nanoseconds into milliseconds since the
  // epoch, keeping the microseconds that Date.parse drops; NaN when it is not one, or is
  // Go's zero time.
  function parseTime(s) {
    const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$/.exec(str(s));
    if (!m) return NaN;
    const base = Date.parse(m[1] + m[3]);
    if (!(base > 0)) return NaN;
    return base + (m[2] ? Number("0" + m[2]) * 1000 : 0);
  }

  const pad = (n) => String(n).padStart(2, "0");

  // fmtClock formats a time (ms since the epoch) as the local HH:MM:SS.
  function fmtClock(ms) {
    if (!Number.isFinite(ms)) return DASH;
    const d = new Date(ms);
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  // fmtSecs formats a duration in seconds.
  function fmtSecs(x) {
    const n = num(x);
    if (n === null) return "";
    const s = Math.ceil(n);
    return s < 60 ? s + "s" : Math.floor(s / 60) + "m" + pad(s % 60) + "s";
  }

  // fmtMs formats a duration in milliseconds.
  function fmtMs(ms) {
    if (!Number.isFinite(ms)) return DASH;
    if (ms < 1) return (ms * 1000).toFixed(0) + " µs";
    return fmtNum(ms) + " ms";
  }

  // --- header ----------------------------------------------------------------------------

  let live = false;
  let lastMessage = 0;

  // setLive shows whether the event stream is delivering.
  function setLive(on) {
    live = on;
    const e = byId("live");
    setText(e, on ? "live" : "disconnected");
    mark(e, "ok", on);
    mark(e, "bad", !on);
  }

  function renderHeader(snap, t) {
    setText(byId("instance"), str(snap.instance));
    const health = byId("health");
    setText(health, str(snap.health) || DASH);
    mark(health, "ok", snap.health === "ok");
    mark(health, "bad", snap.health !== "ok");
    const updated = byId("updated");
    setText(updated, fmtClock(t));
    if (Number.isFinite(t)) updated.setAttribute("datetime", new Date(t).toISOString());
    const w = num(snap.window_seconds);
    setText(byId("window"), w === null ? "" : "window " + Math.round(w) + "s");
    const errors = byId("errors");
    const list = Array.isArray(snap.errors) ? snap.errors.map(str) : [];
    errors.hidden = list.length === 0;
    sync(errors, list, (s) => s, () => h("li", "bad"), (li, s) => setText(li, s));
  }

  // --- services --------------------------------------------------------------------------

  const SUMMARY = [
    ["rps", "RPS"], ["success", "success %"], ["p50", "p50 ms"], ["p99", "p99 ms"],
    ["inflight", "in-flight"], ["retries", "retries/s"], ["hedges", "hedges/s"], ["ejections", "ejections"],
  ];
  const NODE_COLS = [
    ["node", "node"], ["address", "address"], ["version", "version"], ["rps", "RPS"],
    ["success", "success %"], ["p50", "p50 ms"], ["p99", "p99 ms"], ["inflight", "in-flight"],
    ["score", "p2c score"], ["ejection", "ejection"], ["breaker", "breaker"],
  ];
  const NUMERIC = new Set(["rps", "success", "p50", "p99", "inflight", "retries", "hedges", "ejections", "score"]);

  // headRow makes a table's head from [col, title] pairs.
  function headRow(cols) {
    const thead = h("thead");
    const tr = h("tr");
    for (const [col, title] of cols) tr.append(h("th", NUMERIC.has(col) ? "num" : "", title));
    thead.append(tr);
    return thead;
  }

  // cellsRow makes a row with one cell per column, and returns it with its cells by column.
  function cellsRow(cols) {
    const tr = h("tr");
    const cells = {};
    for (const [col] of cols) {
      cells[col] = td(col, NUMERIC.has(col) ? "num" : "");
      tr.append(cells[col]);
    }
    return [tr, cells];
  }

  // isLow reports a success share below 99%.
  const isLow = (x) => num(x) !== null && x < 0.99;

  function createService() {
    const sec = h("section", "service");
    const title = h("h3");
    const name = h("span", "name");
    const count = h("span", "muted");
    title.append(name, " ", count);
    const summary = h("table", "summary");
    const [sumRow, sum] = cellsRow(SUMMARY);
    const sumBody = h("tbody");
    sumBody.append(sumRow);
    summary.append(headRow(SUMMARY), sumBody);
    const nodes = h("table", "nodes");
    const nodeBody = h("tbody");
    nodes.append(headRow(NODE_COLS), nodeBody);
    sec.append(title, summary, nodes);
    partsOf.set(sec, { name, count, sum, nodeBody });
    return sec;
  }

  function updateService(sec, s) {
    const p = partsOf.get(sec);
    setData(sec, "service", str(s.name));
    setText(p.name, str(s.name));
    const nodes = arr(s.nodes);
    setText(p.count, nodes.length === 0 ? "no nodes" : nodes.length === 1 ? "1 node" : nodes.length + " nodes");
    setText(p.sum.rps, fmtNum(s.rps));
    setText(p.sum.success, fmtPct(s.success));
    mark(p.sum.success, "bad", isLow(s.success));
    setText(p.sum.p50, fmtNum(s.p50_ms));
    setText(p.sum.p99, fmtNum(s.p99_ms));
    setText(p.sum.inflight, fmtCount(s.in_flight));
    setText(p.sum.retries, fmtNum(s.retries_per_second));
    setText(p.sum.hedges, fmtNum(s.hedges_per_second));
    setText(p.sum.ejections, fmtCount(s.ejections));
    sync(p.nodeBody, nodes, (n) => str(n.id), createNode, updateNode);
  }

  function createNode() {
    const [tr, cells] = cellsRow(NODE_COLS);
    partsOf.set(tr, cells);
    return tr;
  }

  // ejection describes a node's ejection, or "" when it is in.
  function ejection(n) {
    const left = fmtSecs(n.ejected_for_seconds);
    const tail = left ? ", " + left + " left" : "";
    if (n.ejected) return "ejected" + tail;
    const eps = Array.isArray(n.ejected_endpoints) ? n.ejected_endpoints.map(str) : [];
    if (eps.length > 0) return "ejected for " + eps.join(", ") + tail;
    return "";
  }

  function updateNode(tr, n) {
    const c = partsOf.get(tr);
    setData(tr, "node", str(n.id));
    mark(tr, "gone", n.gone);
    setText(c.node, str(n.id) + (n.gone ? " (gone)" : ""));
    setText(c.address, str(n.address) || DASH);
    setText(c.version, str(n.version) || DASH);
    setText(c.rps, fmtNum(n.rps));
    setText(c.success, fmtPct(n.success));
    mark(c.success, "bad", isLow(n.success));
    setText(c.p50, fmtNum(n.p50_ms));
    setText(c.p99, fmtNum(n.p99_ms));
    setText(c.inflight, fmtCount(n.in_flight));
    setText(c.score, fmtNum(n.score));
    const ej = ejection(n);
    setText(c.ejection, ej || DASH);
    mark(c.ejection, "bad", ej !== "");
    const br = str(n.breaker);
    setText(c.breaker, br || DASH);
    mark(c.breaker, "bad", br === "open");
    mark(c.breaker, "warn", br === "half-open");
    mark(tr, "out", Boolean(n.ejected) || br === "open");
  }

  function renderServices(list) {
    byId("no-services").hidden = list.length > 0;
    sync(byId("services"), list, (s) => str(s.name), createService, updateService);
  }

  // --- wrappers --------------------------------------------------------------------------

  const WRAPPER_COLS = ["name", "side", "instances", "calls", "rps", "rejects", "faults", "us", "states"];
  const WRAPPER_NUM = new Set(["instances", "calls", "rps", "rejects", "faults", "us"]);

  // stateText describes one state a wrapper reported: "node X: open",
  // "greeter/Hello node X: open", "greeter: limited".
  function stateText(st) {
    let where = [str(st.service), str(st.endpoint)].filter((s) => s !== "").join("/");
    if (st.node) where += (where ? " " : "") + "node " + str(st.node);
    return (where ? where + ": " : "") + str(st.value);
  }

  function createWrapper() {
    const tr = h("tr");
    const cells = {};
    for (const col of WRAPPER_COLS) {
      cells[col] = td(col, WRAPPER_NUM.has(col) ? "num" : "");
      tr.append(cells[col]);
    }
    cells.list = h("ul", "states");
    cells.states.append(cells.list);
    partsOf.set(tr, cells);
    return tr;
  }

  function updateWrapper(tr, w) {
    const c = partsOf.get(tr);
    setData(tr, "wrapper", str(w.name));
    setText(c.name, str(w.name));
    setText(c.side, str(w.side));
    setText(c.instances, fmtCount(w.instances));
    setText(c.calls, fmtCount(w.calls));
    setText(c.rps, fmtNum(w.rps));
    setText(c.rejects, fmtCount(w.rejects));
    setText(c.faults, fmtCount(w.faults));
    mark(c.faults, "bad", num(w.faults) > 0);
    setText(c.us, fmtNum(w.us_per_call));
    const states = arr(w.states);
    sync(c.list, states, stateText, () => h("li"), (li, st) => {
      setText(li, stateText(st));
      mark(li, "bad", st.value === "open");
      mark(li, "warn", st.value === "half-open");
    });
  }

  // --- plugins ---------------------------------------------------------------------------

  function createPlugin() {
    const tr = h("tr");
    const cells = { role: td("role"), name: td("name"), health: td("health"), swap: td("swap") };
    cells.swapText = h("span");
    cells.swapError = h("span", "bad");
    cells.swap.append(cells.swapText, " ", cells.swapError);
    tr.append(cells.role, cells.name, cells.health, cells.swap);
    partsOf.set(tr, cells);
    return tr;
  }

  function updatePlugin(tr, p) {
    const c = partsOf.get(tr);
    setData(tr, "role", str(p.role));
    setText(c.role, str(p.role));
    setText(c.name, str(p.name));
    setText(c.health, str(p.health) || DASH);
    mark(c.health, "bad", p.health !== "ok");
    const sw = p.last_swap && typeof p.last_swap === "object" ? p.last_swap : null;
    setText(c.swapText, sw ? fmtClock(parseTime(sw.time)) + " " + str(sw.from) + " \u2192 " + str(sw.to) : DASH);
    setText(c.swapError, sw && sw.error ? "error: " + str(sw.error) : "");
  }

  // --- config ----------------------------------------------------------------------------

  function renderConfig(cfg) {
    const dl = byId("config");
    const dd = {};
    for (const e of dl.children) {
      const col = e.getAttribute("data-col");
      if (col) dd[col] = e;
    }
    setText(dd.source, str(cfg.source) || DASH);
    setText(dd.loaded, fmtClock(parseTime(cfg.loaded)));
    const r = cfg.last_reload && typeof cfg.last_reload === "object" ? cfg.last_reload : null;
    let text = DASH;
    if (r) {
      text = fmtClock(parseTime(r.time)) + " " + str(r.result);
      if (r.error) text += ": " + str(r.error);
    }
    setText(dd.reload, text);
    mark(dd.reload, "bad", Boolean(r) && r.result === "failed");
  }

  // --- failed calls and the waterfall ------------------------------------------------------

  let openTrace = null; // the trace ID the waterfall shows, or null
  let loads = 0; // counts waterfall loads, so that a stale answer is dropped

  function createFailed(f) {
    const tr = h("tr");
    const cells = {
      time: td("time"), service: td("service"), endpoint: td("endpoint"),
      status: td("status", "bad"), ms: td("ms", "num"), trace: td("trace"),
    };
    const id = str(f.trace);
    const button = h("button", "link", id.slice(0, 8) || "trace");
    button.type = "button";
    tr.addEventListener("click", () => showTrace(id)); // the whole row, and its button (by keyboard too)
    cells.trace.append(button);
    tr.append(cells.time, cells.service, cells.endpoint, cells.status, cells.ms, cells.trace);
    partsOf.set(tr, cells);
    return tr;
  }

  function updateFailed(tr, f) {
    const c = partsOf.get(tr);
    setData(tr, "trace", str(f.trace));
    mark(tr, "selected", str(f.trace) === openTrace);
    setText(c.time, fmtClock(parseTime(f.time)));
    setText(c.service, str(f.service));
    setText(c.endpoint, str(f.endpoint));
    setText(c.status, str(f.status));
    setText(c.ms, fmtNum(f.ms));
  }

  function renderFailed(list) {
    byId("no-failed").hidden = list.length > 0;
    sync(byId("failed").tBodies[0], list, (f) => str(f.trace), createFailed, updateFailed);
  }

  // markSelected marks the row of the trace that the waterfall shows.
  function markSelected() {
    for (const tr of byId("failed").tBodies[0].rows) mark(tr, "selected", keyOf.get(tr) === openTrace);
  }

  function closeTrace() {
    openTrace = null;
    loads++;
    byId("waterfall").hidden = true;
    byId("waterfall-spans").replaceChildren();
    markSelected();
  }

  // showTrace opens the waterfall of trace id.
  async function showTrace(id) {
    openTrace = id;
    const load = ++loads;
    byId("waterfall").hidden = false;
    setData(byId("waterfall"), "open", id);
    setText(byId("waterfall-title"), "trace " + id);
    setText(byId("waterfall-note"), "loading\u2026");
    byId("waterfall-spans").replaceChildren();
    markSelected();
    let trace;
    try {
      const resp = await fetch("/traces?id=" + encodeURIComponent(id), {
        headers: { Accept: "application/json" }, cache: "no-store",
      });
      const body = await resp.json().catch(() => null);
      if (load !== loads) return;
      if (!resp.ok) {
        const why = body && typeof body === "object" && body.detail ? str(body.detail) : "HTTP " + resp.status;
        setText(byId("waterfall-note"), "cannot show the trace: " + why);
        return;
      }
      trace = body;
    } catch (err) {
      if (load === loads) setText(byId("waterfall-note"), "cannot load the trace: " + str(err && err.message));
      return;
    }
    drawWaterfall(id, trace && typeof trace === "object" ? trace : {});
  }

  // spanMeta describes a span's attributes that matter to a call: its node, attempt,
  // service and endpoint, HTTP status and wrapper.
  function spanMeta(s, attrs) {
    const parts = [];
    const a = (k) => str(attrs[k]);
    if (a("micro.service") || a("micro.endpoint")) {
      parts.push([a("micro.service"), a("micro.endpoint")].filter((x) => x).join("/"));
    }
    if (a("micro.node")) parts.push("node " + a("micro.node"));
    if (a("micro.attempt")) {
      parts.push("attempt " + a("micro.attempt") + (a("micro.attempt.reason") ? " (" + a("micro.attempt.reason") + ")" : ""));
    }
    if (a("micro.wrapper")) parts.push("wrapper " + a("micro.wrapper") + (a("micro.wrapper.verdict") ? " " + a("micro.wrapper.verdict") : ""));
    if (a("http.response.status_code")) parts.push("HTTP " + a("http.response.status_code"));
    if (a("micro.abandoned") === "true") parts.push("abandoned");
    if (s.Service) parts.push("[" + str(s.Service) + "]");
    return parts.join(" \u00b7 ");
  }

  // drawWaterfall draws the spans of a trace as bars on one time axis, from the trace's
  // first start to its last end, each indented under its parent.
  function drawWaterfall(id, trace) {
    const spans = arr(trace.Spans).map((s) => ({
      s, id: str(s.Span), parent: str(s.Parent), start: parseTime(s.Start), end: parseTime(s.End),
    })).filter((x) => Number.isFinite(x.start) && Number.isFinite(x.end));
    const box = byId("waterfall-spans");
    if (spans.length === 0) {
      setText(byId("waterfall-note"), "trace " + id + " has no spans");
      box.replaceChildren();
      return;
    }
    const t0 = Math.min(...spans.map((x) => x.start));
    const t1 = Math.max(...spans.map((x) => x.end));
    const total = t1 - t0;
    const byID = new Map(spans.map((x) => [x.id, x]));
    const depth = (x) => {
      let d = 0;
      const seen = new Set();
      for (let p = byID.get(x.parent); p && !seen.has(p); p = byID.get(p.parent)) {
        seen.add(p);
        d++;
      }
      return d;
    };
    // Children right under their parents, siblings by start.
    const kids = new Map();
    const roots = [];
    for (const x of spans) {
      if (x.parent && byID.has(x.parent) && x.parent !== x.id) {
        if (!kids.has(x.parent)) kids.set(x.parent, []);
        kids.get(x.parent).push(x);
      } else {
        roots.push(x);
      }
    }
    const order = [];
    const placed = new Set();
    const walk = (x) => {
      if (placed.has(x)) return;
      placed.add(x);
      order.push(x);
      for (const k of (kids.get(x.id) || []).sort((a, b) => a.start - b.start)) walk(k);
    };
    for (const r of roots.sort((a, b) => a.start - b.start)) walk(r);
    for (const x of spans) walk(x); // spans in a parent cycle

    const failed = spans.filter((x) => x.s.Failed).length;
    let note = spans.length + (spans.length === 1 ? " span" : " spans") + ", " + fmtMs(total);
    if (failed > 0) note += ", " + failed + " failed";
    if (num(trace.Dropped) > 0) note += ", " + trace.Dropped + " more dropped";
    setText(byId("waterfall-note"), note);

    const rows = order.map((x) => {
      const s = x.s;
      const attrs = s.Attrs && typeof s.Attrs === "object" ? s.Attrs : {};
      const row = h("div", "span");
      row.setAttribute("data-span", x.id);
      mark(row, "failed", s.Failed);
      const label = h("div", "label");
      label.style.paddingLeft = (depth(x) * 1.2).toFixed(1) + "em";
      label.append(h("span", "name", str(s.Name)));
      const meta = spanMeta(s, attrs);
      if (meta) label.append(" ", h("span", "meta", meta));
      const track = h("div", "track");
      const bar = h("div", "bar");
      const left = total > 0 ? ((x.start - t0) / total) * 100 : 0;
      const width = total > 0 ? ((x.end - x.start) / total) * 100 : 100;
      bar.style.left = left.toFixed(3) + "%";
      bar.style.width = Math.max(0, Math.min(100 - left, width)).toFixed(3) + "%";
      track.append(bar);
      const dur = h("div", "dur num", fmtMs(x.end - x.start));
      row.append(label, track, dur);
      if (s.Failed) row.append(h("div", "status", "failed" + (s.Status ? ": " + str(s.Status) : "")));
      return row;
    });
    box.replaceChildren(...rows);
  }

  // --- snapshots ---------------------------------------------------------------------------

  let streamed = false; // set once a snapshot came over the event stream

  // render draws a snapshot.
  function render(snap) {
    if (!snap || typeof snap !== "object") return;
    renderHeader(snap, parseTime(snap.time));
    renderServices(arr(snap.services));
    sync(byId("wrappers").tBodies[0], arr(snap.wrappers), (w) => str(w.name) + "\u0000" + str(w.side), createWrapper, updateWrapper);
    sync(byId("plugins").tBodies[0], arr(snap.plugins), (p) => str(p.role) + "\u0000" + str(p.name), createPlugin, updatePlugin);
    renderConfig(snap.config && typeof snap.config === "object" ? snap.config : {});
    renderFailed(arr(snap.failed));
  }

  // connect follows the event stream. EventSource reconnects by itself after a network
  // error; after an HTTP error it gives up, so then a new one is opened a little later.
  function connect() {
    const es = new EventSource("/ui/events");
    es.onopen = () => {
      lastMessage = Date.now();
      setLive(true);
    };
    es.onmessage = (ev) => {
      lastMessage = Date.now();
      setLive(true);
      let snap;
      try {
        snap = JSON.parse(ev.data);
      } catch (err) {
        console.warn("dashboard: a status event that is not JSON:", err);
        return;
      }
      streamed = true;
      render(snap);
    };
    es.onerror = () => {
      setLive(false);
      if (es.readyState === EventSource.CLOSED) setTimeout(connect, RETRY_MS);
    };
  }

  function start() {
    byId("waterfall-close").addEventListener("click", closeTrace);
    setLive(false);
    fetch("/status", { headers: { Accept: "application/json" }, cache: "no-store" })
      .then((resp) => (resp.ok ? resp.json() : Promise.reject(new Error("GET /status: HTTP " + resp.status))))
      .then((snap) => {
        if (!streamed) render(snap); // the stream may have been faster, and is newer
      })
      .catch((err) => console.warn("dashboard:", str(err && err.message)));
    connect();
    setInterval(() => {
      if (live && Date.now() - lastMessage > STALE_MS) setLive(false);
    }, 1000);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
