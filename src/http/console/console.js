// ssegate console: plain JavaScript, no build step, no dependency, nothing from elsewhere.
// Everything the gateway sends is put on the page as text (textContent), never as markup.
"use strict";

(() => {
  const TOKEN_KEY = "ssegate.console.token";
  const STATUS_STALE_MS = 2500; // no status from the stream for this long: poll
  const CHANNELS_EVERY_MS = 3000;
  const MAX_INCIDENTS = 200;

  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  let token = null;
  try {
    token = sessionStorage.getItem(TOKEN_KEY);
  } catch {
    token = null;
  }
  /** Bumped at every sign-in and sign-out: loops of an older session stop. */
  let session = 0;
  let streamAbort = null;
  let lastStatus = null;
  let lastStatusAt = 0;
  let lastStatusFrom = "";
  /** Whether the gateway speaks the cluster contract (`status.nodes`). */
  let clusterApi = false;
  let lastSearch = { user: "", channel: "" };
  const channelSamples = new Map(); // channel -> {events, at}
  const incidents = []; // newest first
  const incidentKeys = new Set();

  // ---------- the API ----------

  class ApiFailure extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
    /** The API's own sentence, with its code. */
    get sentence() {
      return this.code ? `${this.message} (${this.code})` : this.message;
    }
  }

  function headers(extra) {
    const h = Object.assign({}, extra);
    if (token) h.Authorization = `Bearer ${token}`;
    return h;
  }

  async function api(method, path, body) {
    const init = { method, headers: headers(), credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiFailure(0, "", `the gateway did not answer (${e && e.message ? e.message : e})`);
    }
    return answer(res);
  }

  async function answer(res) {
    const text = await res.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (!res.ok) {
      const err = json && typeof json === "object" ? json.error : null;
      const code = err && typeof err.code === "string" ? err.code : `http_${res.status}`;
      const message = err && typeof err.message === "string" ? err.message : `${res.status} ${res.statusText}`.trim();
      throw new ApiFailure(res.status, code, message);
    }
    return json;
  }

  /** A failure that means the credentials are gone: back to the sign-in form. */
  function lostCredentials(e) {
    if (!(e instanceof ApiFailure) || (e.status !== 401 && !(e.status === 403 && e.code === "admin_required"))) {
      return false;
    }
    signOut(`${e.sentence}. Sign in again.`);
    return true;
  }

  // ---------- the page ----------

  function el(tag, props, children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === undefined || v === null) continue;
        if (k === "text") node.textContent = String(v);
        else if (k === "className") node.className = v;
        else if (k === "dataset") Object.assign(node.dataset, v);
        else if (k === "type") node.type = v;
        else node.setAttribute(k, String(v));
      }
    }
    for (const c of children || []) node.append(c);
    return node;
  }

  function setText(node, text) {
    const t = text === undefined || text === null ? "" : String(text);
    if (node.textContent !== t) node.textContent = t;
  }

  function say(text) {
    // A repeated sentence is still announced.
    const m = $("message");
    m.textContent = "";
    setTimeout(() => (m.textContent = text), 30);
  }

  function fail(e) {
    const text = e instanceof ApiFailure ? e.sentence : String(e && e.message ? e.message : e);
    $("error").textContent = text;
  }

  function clearError() {
    $("error").textContent = "";
  }

  function setLive(state, text) {
    const live = document.querySelector('[data-testid="live"]');
    if (live.dataset.state !== state) live.dataset.state = state;
    setText($("live-text"), text);
  }

  const dash = "—";
  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
  function fmtCount(v) {
    const n = num(v);
    return n === null ? dash : String(n);
  }
  function fmtRate(v) {
    const n = num(v);
    if (n === null) return dash;
    return n >= 100 ? n.toFixed(0) : n.toFixed(1);
  }
  function fmtDuration(seconds) {
    const s0 = num(seconds);
    if (s0 === null) return dash;
    let s = Math.floor(s0);
    const d = Math.floor(s / 86400);
    s -= d * 86400;
    const h = Math.floor(s / 3600);
    s -= h * 3600;
    const m = Math.floor(s / 60);
    s -= m * 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${s}s`;
    return `${s}s`;
  }
  function fmtAgo(ms) {
    const n = num(ms);
    if (n === null) return dash;
    if (n < 1000) return `${Math.round(n)} ms ago`;
    return `${fmtDuration(n / 1000)} ago`;
  }
  function fmtTime(t) {
    if (typeof t !== "string" || !t) return dash;
    const d = new Date(t);
    if (Number.isNaN(d.getTime())) return t;
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }
  const str = (v) => (v === undefined || v === null || v === "" ? dash : String(v));

  /**
   * Brings `tbody` to one row per item, in order, keeping the rows (and their focused
   * buttons) of items already shown: `build(item)` makes a row, `update(tr, item)` refreshes it.
   */
  function syncRows(tbody, items, key, build, update, emptyText, columns) {
    const old = new Map();
    for (const tr of Array.from(tbody.rows)) {
      if (tr.dataset.key !== undefined) old.set(tr.dataset.key, tr);
      else tr.remove();
    }
    const wanted = [];
    for (const item of items) {
      const k = key(item);
      let tr = old.get(k);
      if (tr) old.delete(k);
      else {
        tr = build(item);
        tr.dataset.key = k;
      }
      update(tr, item);
      wanted.push(tr);
    }
    for (const tr of old.values()) tr.remove();
    // Move rows only where the order changed (moving a row would blur its focused button).
    let prev = null;
    for (const tr of wanted) {
      const expected = prev ? prev.nextSibling : tbody.firstChild;
      if (expected !== tr) tbody.insertBefore(tr, expected);
      prev = tr;
    }
    if (items.length === 0) {
      tbody.append(el("tr", {}, [el("td", { className: "empty", colspan: columns, text: emptyText })]));
    }
  }

  /** A row of `n` cells named by `fields` (each cell gets `data-field`). */
  function rowWith(fields, attrs) {
    const tr = el("tr", attrs);
    for (const f of fields) tr.append(el("td", { dataset: { field: f } }));
    return tr;
  }
  const cell = (tr, field) => tr.querySelector(`td[data-field="${field}"]`);

  // ---------- sign in ----------

  function showSignIn(errorText) {
    $("sign-in").hidden = false;
    $("nav").hidden = true;
    $("main").hidden = true;
    $("sign-out").hidden = true;
    setText($("whoami"), "");
    setLive("off", "not connected");
    if (errorText) $("error").textContent = errorText;
    $("token").focus();
  }

  async function trySignIn(fromForm) {
    let status;
    try {
      status = await api("GET", "/v1/status");
    } catch (e) {
      if (e instanceof ApiFailure && (e.status === 401 || e.status === 403)) {
        if (token) {
          // A stored token that no longer works is dropped.
          forgetToken();
          showSignIn(`${e.sentence}`);
        } else {
          showSignIn(fromForm ? e.sentence : "");
        }
        return;
      }
      fail(e);
      showSignIn();
      return;
    }
    clearError();
    signedIn(status);
    // The form is gone: keep the keyboard on the page (the panels' links).
    if (fromForm) $("nav").querySelector("a").focus();
  }

  function forgetToken() {
    token = null;
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      /* storage off: nothing kept */
    }
  }

  function signedIn(status) {
    const mine = ++session;
    $("sign-in").hidden = true;
    $("nav").hidden = false;
    $("main").hidden = false;
    $("sign-out").hidden = !token;
    setText($("whoami"), token ? "signed in with an admin token" : "signed in by cookie");
    say("Signed in.");
    renderStatus(status, "poll");
    streamLoop(mine);
    pollLoop(mine);
    channelsLoop(mine);
    loadIncidents(mine);
    searchConnections(lastSearch);
  }

  function signOut(why) {
    session++;
    if (streamAbort) streamAbort.abort();
    streamAbort = null;
    forgetToken();
    lastStatus = null;
    lastStatusAt = 0;
    incidents.length = 0;
    incidentKeys.clear();
    channelSamples.clear();
    for (const id of ["nodes-body", "connections-body", "channels-body", "sources-body", "incidents-body"]) {
      $(id).replaceChildren();
    }
    showSignIn(why || "");
    if (!why) say("Signed out.");
  }

  // ---------- live status: the admin stream, polling as a fallback ----------

  /** Reads `text/event-stream` from a fetch body; calls `onEvent(type, data)` per event. */
  async function readEvents(body, onEvent) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    let type = "";
    let data = [];
    let first = true;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      if (first && buf.length) {
        if (buf.charCodeAt(0) === 0xfeff) buf = buf.slice(1);
        first = false;
      }
      for (;;) {
        const i = buf.search(/[\r\n]/);
        if (i < 0) break;
        // A final "\r" may be the first half of "\r\n": wait for the next chunk.
        if (buf[i] === "\r" && i === buf.length - 1) break;
        const line = buf.slice(0, i);
        buf = buf.slice(i + (buf[i] === "\r" && buf[i + 1] === "\n" ? 2 : 1));
        if (line === "") {
          if (data.length) onEvent(type || "message", data.join("\n"));
          type = "";
          data = [];
          continue;
        }
        if (line[0] === ":") continue;
        const c = line.indexOf(":");
        const field = c < 0 ? line : line.slice(0, c);
        let v = c < 0 ? "" : line.slice(c + 1);
        if (v[0] === " ") v = v.slice(1);
        if (field === "event") type = v;
        else if (field === "data") data.push(v);
      }
    }
  }

  async function streamLoop(mine) {
    let backoff = 1000;
    while (mine === session) {
      const ctrl = new AbortController();
      streamAbort = ctrl;
      try {
        const res = await fetch("/v1/admin/stream", {
          headers: headers({ Accept: "text/event-stream" }),
          credentials: "same-origin",
          cache: "no-store",
          signal: ctrl.signal,
        });
        if (!res.ok) await answer(res); // throws the API's error
        setLive("live", "live");
        await readEvents(res.body, (type, data) => {
          if (mine !== session) return;
          backoff = 1000;
          let value;
          try {
            value = JSON.parse(data);
          } catch {
            return;
          }
          if (type === "status") renderStatus(value, "stream");
          else if (type === "incident") addIncidents([value], true);
        });
      } catch (e) {
        if (mine !== session || ctrl.signal.aborted) return;
        if (lostCredentials(e)) return;
        if (e instanceof ApiFailure && e.status === 404) {
          // A gateway without the admin stream: polling only.
          setLive("polling", "polling (no admin stream)");
          await sleep(30000);
          continue;
        }
      }
      if (mine !== session) return;
      setLive("polling", `reconnecting in ${Math.round(backoff / 1000)} s`);
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 15000);
    }
  }

  async function pollLoop(mine) {
    while (mine === session) {
      await sleep(1000);
      if (mine !== session) return;
      if (lastStatusFrom === "stream" && Date.now() - lastStatusAt < STATUS_STALE_MS) continue;
      try {
        const status = await api("GET", "/v1/status");
        if (mine !== session) return;
        renderStatus(status, "poll");
        if (document.querySelector('[data-testid="live"]').dataset.state !== "live") setLive("polling", "polling");
      } catch (e) {
        if (mine !== session) return;
        if (lostCredentials(e)) return;
        setLive("down", e instanceof ApiFailure ? e.sentence : "gateway unreachable");
      }
    }
  }

  // ---------- nodes and sources ----------

  /** The nodes of a status: `status.nodes`, or this node alone from an older gateway. */
  function nodesOf(status) {
    if (Array.isArray(status.nodes)) return status.nodes;
    return [
      {
        node_id: status.node_id,
        self: true,
        ready: true,
        draining: false,
        version: status.version,
        uptime_s: status.uptime_s,
        connections: status.connections,
        channels: status.channels,
        log_head: status.log ? status.log.head : null,
        sources: status.sources || [],
      },
    ];
  }

  function renderStatus(status, from) {
    if (!status || typeof status !== "object") return;
    lastStatus = status;
    lastStatusAt = Date.now();
    lastStatusFrom = from;
    clusterApi = Array.isArray(status.nodes);
    if (from === "stream") setLive("live", "live");
    const nodes = nodesOf(status);
    const cluster = status.cluster;
    setText(
      $("cluster-note"),
      cluster && cluster.bus
        ? `Cluster over ${cluster.bus}: heartbeat every ${cluster.heartbeat_ms} ms, a node is gone after ${cluster.node_timeout_ms} ms. This page talks to ${status.node_id}.`
        : `Single node ${status.node_id} (no cluster bus).`,
    );
    setText(document.querySelector('[data-testid="node-count"]'), `(${nodes.length})`);
    renderNodes(nodes);
    renderSources(status, nodes);
  }

  const NODE_FIELDS = [
    "node", "state", "connections", "events_in", "events_out", "log_head",
    "dispatched", "lag", "version", "uptime", "last_seen", "actions",
  ];

  function renderNodes(nodes) {
    syncRows(
      $("nodes-body"),
      nodes,
      (n) => String(n.node_id),
      (n) => {
        const tr = rowWith(NODE_FIELDS, { dataset: { node: String(n.node_id) } });
        const th = el("th", { scope: "row", dataset: { field: "node" } });
        cell(tr, "node").replaceWith(th);
        for (const f of ["connections", "events_in", "events_out", "lag"]) cell(tr, f).className = "num";
        for (const f of ["log_head", "dispatched"]) cell(tr, f).className = "mono";
        const drain = el("button", {
          type: "button",
          className: "danger",
          text: "Drain",
          "aria-label": `Drain node ${n.node_id}`,
          dataset: { testid: "drain", node: String(n.node_id) },
        });
        drain.addEventListener("click", () => drainNode(String(n.node_id), drain));
        cell(tr, "actions").append(drain);
        return tr;
      },
      (tr, n) => {
        setText(tr.querySelector('th[data-field="node"]'), n.self ? `${n.node_id} (this node)` : n.node_id);
        const state = n.draining ? "draining" : n.ready === false ? "not ready" : "ready";
        const st = cell(tr, "state");
        setText(st, state);
        st.className = `state-${state.replace(" ", "-")}`;
        tr.dataset.state = state;
        setText(cell(tr, "connections"), fmtCount(n.connections));
        setText(cell(tr, "events_in"), fmtRate(n.events_in_per_s));
        setText(cell(tr, "events_out"), fmtRate(n.events_out_per_s));
        setText(cell(tr, "log_head"), str(n.log_head));
        setText(cell(tr, "dispatched"), str(n.dispatched));
        setText(cell(tr, "lag"), fmtCount(n.lag_ms));
        setText(cell(tr, "version"), str(n.version));
        setText(cell(tr, "uptime"), fmtDuration(n.uptime_s));
        setText(cell(tr, "last_seen"), n.self ? "this node" : fmtAgo(n.last_seen_ms));
        const btn = tr.querySelector('button[data-testid="drain"]');
        btn.disabled = !!n.draining;
      },
      "no nodes",
      NODE_FIELDS.length,
    );
  }

  async function drainNode(node, button) {
    if (!window.confirm(`Drain node ${node}? Its streams are told to reconnect elsewhere and the process exits.`)) return;
    button.disabled = true;
    clearError();
    try {
      const r = await api("POST", "/v1/admin/drain", clusterApi ? { node } : {});
      say(`Node ${node} is draining (window ${r && r.window_ms !== undefined ? r.window_ms : "?"} ms).`);
    } catch (e) {
      if (!lostCredentials(e)) fail(e);
      button.disabled = false;
    }
  }

  const SOURCE_FIELDS = [
    "name", "node", "type", "state", "last_change", "checkpoint", "events", "skipped", "restarts", "error", "actions",
  ];

  function sourcesOf(status, nodes) {
    const list = [];
    let any = false;
    for (const n of nodes) {
      const srcs = Array.isArray(n.sources) ? n.sources : n.self && Array.isArray(status.sources) ? status.sources : [];
      for (const s of srcs) {
        any = true;
        list.push(Object.assign({}, s, { node: String(n.node_id) }));
      }
    }
    if (!any && Array.isArray(status.sources)) {
      for (const s of status.sources) list.push(Object.assign({}, s, { node: String(status.node_id) }));
    }
    return list;
  }

  function renderSources(status, nodes) {
    syncRows(
      $("sources-body"),
      sourcesOf(status, nodes),
      (s) => `${s.node}\u0000${s.name}`,
      (s) => {
        const tr = rowWith(SOURCE_FIELDS, { dataset: { source: String(s.name), node: s.node } });
        const th = el("th", { scope: "row", dataset: { field: "name" } });
        cell(tr, "name").replaceWith(th);
        for (const f of ["events", "skipped", "restarts"]) cell(tr, f).className = "num";
        cell(tr, "checkpoint").className = "mono";
        cell(tr, "error").className = "wrap";
        cell(tr, "state").dataset.testid = "source-state";
        for (const action of ["start", "stop"]) {
          const b = el("button", {
            type: "button",
            className: action === "stop" ? "danger" : "secondary",
            text: action === "start" ? "Start" : "Stop",
            "aria-label": `${action === "start" ? "Start" : "Stop"} source ${s.name} on node ${s.node}`,
            dataset: { testid: `source-${action}` },
          });
          b.addEventListener("click", () => sourceAction(String(s.name), s.node, action));
          cell(tr, "actions").append(b);
        }
        return tr;
      },
      (tr, s) => updateSourceRow(tr, s),
      "no sources configured",
      SOURCE_FIELDS.length,
    );
  }

  function updateSourceRow(tr, s) {
    setText(tr.querySelector('th[data-field="name"]'), s.name);
    setText(cell(tr, "node"), s.node);
    setText(cell(tr, "type"), str(s.type));
    const state = String(s.state || "unknown");
    const st = cell(tr, "state");
    setText(st, state);
    st.className = `state-${state}`;
    tr.dataset.state = state;
    // `last_change_ms`: when the source last appended (ms since the epoch; 0: never).
    const changed = num(s.last_change_ms);
    setText(cell(tr, "last_change"), changed ? fmtTime(new Date(changed).toISOString()) : "never");
    setText(cell(tr, "checkpoint"), str(s.checkpoint));
    setText(cell(tr, "events"), fmtCount(s.events));
    setText(cell(tr, "skipped"), fmtCount(s.skipped));
    setText(cell(tr, "restarts"), fmtCount(s.restarts));
    setText(cell(tr, "error"), s.last_error ? String(s.last_error) : "");
    tr.querySelector('[data-testid="source-start"]').disabled = !(state === "stopped" || state === "failed");
    tr.querySelector('[data-testid="source-stop"]').disabled = state === "stopped";
  }

  async function sourceAction(name, node, action) {
    clearError();
    const q = clusterApi ? `?node=${encodeURIComponent(node)}` : "";
    try {
      const r = await api("POST", `/v1/sources/${encodeURIComponent(name)}/${action}${q}`);
      const tr = Array.from($("sources-body").rows).find((row) => row.dataset.key === `${node}\u0000${name}`);
      if (tr && r && typeof r === "object") updateSourceRow(tr, Object.assign({ name, node }, r, { node }));
      say(`Source ${name} on ${node}: ${r && r.state ? r.state : action === "stop" ? "stopped" : "started"}.`);
    } catch (e) {
      if (!lostCredentials(e)) fail(e);
    }
  }

  // ---------- connections ----------

  const CONN_FIELDS = ["user", "node", "channels", "ip", "opened", "connection", "actions"];

  async function searchConnections(q) {
    lastSearch = q;
    const params = new URLSearchParams();
    if (q.user) params.set("user", q.user);
    if (q.channel) params.set("channel", q.channel);
    const qs = params.toString();
    let r;
    try {
      r = await api("GET", `/v1/connections${qs ? `?${qs}` : ""}`);
    } catch (e) {
      if (!lostCredentials(e)) fail(e);
      return;
    }
    const list = r && Array.isArray(r.connections) ? r.connections : [];
    const what = [q.user && `user ${q.user}`, q.channel && `channel ${q.channel}`].filter(Boolean).join(", ");
    const unreachable = r && Array.isArray(r.unreachable) && r.unreachable.length ? ` Not answered: ${r.unreachable.join(", ")}.` : "";
    setText(
      $("connections-note"),
      `${list.length} connection${list.length === 1 ? "" : "s"}${what ? ` of ${what}` : ""}.${unreachable}`,
    );
    syncRows(
      $("connections-body"),
      list,
      (c) => String(c.connection_id),
      (c) => {
        const tr = rowWith(CONN_FIELDS, { dataset: { user: String(c.user), connection: String(c.connection_id) } });
        const th = el("th", { scope: "row", dataset: { field: "user" } });
        cell(tr, "user").replaceWith(th);
        cell(tr, "channels").className = "wrap";
        cell(tr, "connection").className = "mono";
        const kick = el("button", {
          type: "button",
          className: "danger",
          text: "Kick",
          "aria-label": `Kick user ${c.user} (every stream)`,
          dataset: { testid: "kick", user: String(c.user) },
        });
        kick.addEventListener("click", () => kickUser(String(c.user), kick));
        cell(tr, "actions").append(kick);
        return tr;
      },
      (tr, c) => {
        setText(tr.querySelector('th[data-field="user"]'), c.user);
        const node = c.node !== undefined && c.node !== null ? c.node : lastStatus ? lastStatus.node_id : "";
        setText(cell(tr, "node"), str(node));
        tr.dataset.node = String(node);
        setText(cell(tr, "channels"), Array.isArray(c.channels) ? c.channels.join(", ") : "");
        setText(cell(tr, "ip"), str(c.ip));
        setText(cell(tr, "opened"), fmtTime(c.opened));
        setText(cell(tr, "connection"), c.connection_id);
      },
      "no connection",
      CONN_FIELDS.length,
    );
  }

  async function kickUser(user, button) {
    clearError();
    button.disabled = true;
    try {
      const r = await api("DELETE", `/v1/users/${encodeURIComponent(user)}/connections`);
      const n = r && typeof r.closed === "number" ? r.closed : 0;
      const unreachable = r && Array.isArray(r.unreachable) && r.unreachable.length ? ` (not answered: ${r.unreachable.join(", ")})` : "";
      const result = $("kick-result");
      result.textContent = `Kicked ${user}: closed ${n}${unreachable}`;
      result.dataset.closed = String(n);
      say(`Kicked ${user}: closed ${n}${unreachable}.`);
      await sleep(300);
      await searchConnections(lastSearch);
    } catch (e) {
      button.disabled = false;
      if (!lostCredentials(e)) fail(e);
    }
  }

  // ---------- channels ----------

  async function channelsLoop(mine) {
    while (mine === session) {
      try {
        const r = await api("GET", "/v1/channels");
        if (mine !== session) return;
        renderChannels(r && Array.isArray(r.channels) ? r.channels : []);
      } catch (e) {
        if (mine !== session) return;
        if (lostCredentials(e)) return;
        fail(e);
      }
      await sleep(CHANNELS_EVERY_MS);
    }
  }

  function renderChannels(list) {
    const now = performance.now();
    const rows = list.map((c) => {
      const prev = channelSamples.get(c.channel);
      const events = num(c.events);
      let rate = null;
      if (events !== null && prev && events >= prev.events && now > prev.at) {
        rate = ((events - prev.events) * 1000) / (now - prev.at);
      }
      return { channel: String(c.channel), subscribers: c.subscribers, events, rate };
    });
    channelSamples.clear();
    for (const r of rows) if (r.events !== null) channelSamples.set(r.channel, { events: r.events, at: now });
    rows.sort((a, b) => (num(b.subscribers) || 0) - (num(a.subscribers) || 0) || a.channel.localeCompare(b.channel));
    setText(document.querySelector('[data-testid="channel-count"]'), `(${rows.length})`);
    syncRows(
      $("channels-body"),
      rows,
      (r) => r.channel,
      (r) => {
        const tr = rowWith(["channel", "subscribers", "rate"], { dataset: { channel: r.channel } });
        const th = el("th", { scope: "row", dataset: { field: "channel" } });
        cell(tr, "channel").replaceWith(th);
        cell(tr, "subscribers").className = "num";
        cell(tr, "rate").className = "num";
        return tr;
      },
      (tr, r) => {
        setText(tr.querySelector('th[data-field="channel"]'), r.channel);
        setText(cell(tr, "subscribers"), fmtCount(r.subscribers));
        setText(cell(tr, "rate"), r.rate === null ? dash : fmtRate(r.rate));
      },
      "no channel has subscribers",
      3,
    );
  }

  // ---------- publish ----------

  async function publish(form) {
    const out = $("publish-result");
    const channel = form.elements.channel.value.trim();
    const type = form.elements.type.value.trim();
    const raw = form.elements.data.value.trim();
    let data;
    try {
      data = raw === "" ? null : JSON.parse(raw);
    } catch (e) {
      out.dataset.ok = "false";
      out.textContent = `The data is not valid JSON: ${e.message}`;
      return;
    }
    try {
      const r = await api("POST", "/v1/publish", { channel, type, data });
      const ids = r && Array.isArray(r.ids) ? r.ids : [];
      out.dataset.ok = "true";
      out.dataset.id = ids.join(",");
      out.textContent = `Published to ${channel}: id ${ids.join(", ")}`;
    } catch (e) {
      if (lostCredentials(e)) return;
      out.dataset.ok = "false";
      delete out.dataset.id;
      out.textContent = e instanceof ApiFailure ? e.sentence : String(e);
    }
  }

  // ---------- incidents ----------

  async function loadIncidents(mine) {
    try {
      const r = await api("GET", "/v1/admin/incidents");
      if (mine !== session) return;
      const list = r && Array.isArray(r.incidents) ? r.incidents : [];
      const unreachable = r && Array.isArray(r.unreachable) && r.unreachable.length ? `Not answered: ${r.unreachable.join(", ")}.` : "";
      setText($("incidents-note"), unreachable);
      // The list is newest first: add oldest first so the newest ends on top.
      addIncidents(list.slice().reverse(), false);
    } catch (e) {
      if (mine !== session || lostCredentials(e)) return;
      if (e instanceof ApiFailure && e.status === 404) {
        setText($("incidents-note"), "This gateway keeps no incident list.");
      } else {
        setText($("incidents-note"), `Incidents could not be read: ${e.sentence || e}`);
      }
    }
  }

  function addIncidents(list, live) {
    let added = 0;
    for (const i of list) {
      if (!i || typeof i !== "object") continue;
      const k = JSON.stringify([i.time, i.node, i.kind, i.code, i.ip, i.path]);
      if (incidentKeys.has(k)) continue;
      incidentKeys.add(k);
      incidents.unshift(i);
      added++;
    }
    while (incidents.length > MAX_INCIDENTS) incidents.pop();
    if (!added && incidents.length) return;
    setText(document.querySelector('[data-testid="incident-count"]'), `(${incidents.length})`);
    const tbody = $("incidents-body");
    tbody.replaceChildren();
    if (!incidents.length) {
      tbody.append(el("tr", {}, [el("td", { className: "empty", colspan: 6, text: "no incident" })]));
      return;
    }
    for (const i of incidents) {
      tbody.append(
        el("tr", { dataset: { kind: String(i.kind), code: String(i.code) } }, [
          el("th", { scope: "row", text: fmtTime(i.time) }),
          el("td", { text: str(i.node) }),
          el("td", { text: str(i.kind) }),
          el("td", { text: str(i.code) }),
          el("td", { text: str(i.ip) }),
          el("td", { className: "wrap", text: str(i.path) }),
        ]),
      );
    }
    if (live && added) say(`${added} new incident${added === 1 ? "" : "s"}.`);
  }

  // ---------- wiring ----------

  function start() {
    $("sign-in-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = $("token").value.trim();
      if (!value) return;
      token = value;
      try {
        sessionStorage.setItem(TOKEN_KEY, value);
      } catch {
        /* kept in memory only */
      }
      $("token").value = "";
      clearError();
      trySignIn(true);
    });
    $("sign-out").addEventListener("click", () => signOut());
    $("connections-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      clearError();
      const f = ev.currentTarget.elements;
      searchConnections({ user: f.user.value.trim(), channel: f.channel.value.trim() });
    });
    $("publish-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      clearError();
      publish(ev.currentTarget);
    });
    trySignIn(false);
  }

  start();
})();
