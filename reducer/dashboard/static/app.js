// fedn dashboard: reads /api/v1 with the viewer's token and follows /api/v1/events (server-sent events,
// read with fetch() because EventSource cannot send an Authorization header). No polling of the server.

const TOKEN_KEY = "fedn.token";
const state = {
  token: null, role: null, sessions: new Map(), rounds: new Map(), models: [], combiners: [], clients: [],
  selected: null, view: "federation", charts: {}, streamAbort: null, retryMs: 1000,
};
// Read by the browser tests: the points each chart holds, and the last stop request's outcome.
window.fednDashboard = { charts: {}, stop: null, state };

import { ago, badge, bytes, el, fill, fmt, short, toMs, when } from "./view.js";

const $ = (id) => document.getElementById(id);

// -- token ------------------------------------------------------------------------------------------
function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return null;
  }
}
function setToken(token) {
  state.token = token || null;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  state.role = token ? (claims(token)?.role ?? null) : null;
  $("role").hidden = !state.role;
  $("role").textContent = state.role ? `role: ${state.role}` : "";
}
function takeTokenFromFragment() {
  // #token=… never reaches the server; it is moved to sessionStorage and cleared from the address bar.
  const match = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (match) {
    setToken(decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  } else {
    setToken(sessionStorage.getItem(TOKEN_KEY));
  }
}
function askForToken(message) {
  $("token-panel").hidden = false;
  $("token-message").hidden = !message;
  $("token-message").textContent = message || "";
}
const canStop = () => state.role === null || state.role === "admin"; // null: tokens are off (loopback)

// -- REST -------------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, detail) { super(`${status}: ${detail}`); this.status = status; }
}
async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const res = await fetch(`/api/v1${path}`, { ...options, headers });
  if (!res.ok) {
    let detail = res.statusText;
    try { const body = await res.json(); detail = body.detail || body.error || detail; } catch { /* not JSON */ }
    if (res.status === 401) askForToken(`The reducer refused the token: ${detail}`);
    throw new ApiError(res.status, detail);
  }
  return options.raw ? res : res.json();
}
const items = (body) => (Array.isArray(body) ? body : body.items || []);

function showNotice(text) {
  $("notice").hidden = !text;
  $("notice").textContent = text || "";
}

async function loadFederation() {
  const [combiners, clients] = await Promise.all([api("/combiners"), api("/clients?limit=1000")]);
  state.combiners = items(combiners);
  state.clients = items(clients);
  renderFederation();
}
async function loadSessions() {
  for (const s of items(await api("/sessions?limit=100"))) state.sessions.set(s.id, s);
  renderSessions();
  if (state.selected) await loadRounds(state.selected);
}
async function loadRounds(sessionId) {
  const rounds = items(await api(`/sessions/${encodeURIComponent(sessionId)}/rounds?limit=1000`));
  state.rounds.set(sessionId, new Map(rounds.map((r) => [r.id, r])));
  renderDetail();
}
async function loadModels() {
  const body = await api("/models?limit=100");
  state.models = items(body);
  state.modelTotal = typeof body.total === "number" ? body.total : state.models.length;
  renderModels();
}
async function loadAll() {
  try {
    await Promise.all([loadFederation(), loadSessions(), loadModels()]);
    $("token-panel").hidden = true;
    showNotice("");
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showNotice(`Cannot load the federation: ${err.message}`);
  }
}

// -- views ------------------------------------------------------------------------------------------
function renderFederation() {
  const max = Math.max(1, ...state.combiners.map((c) => c.num_clients || 0));
  const combiners = state.combiners.map((c) =>
    el("tr", {},
      el("td", {}, el("strong", {}, c.name || c.id), el("div", { class: "muted mono" }, c.id)),
      el("td", {}, badge(c.status)),
      el("td", {}, el("span", { class: "bar" }, el("span", { style: `width:${(100 * (c.num_clients || 0)) / max}%` })), String(c.num_clients ?? 0)),
      el("td", { class: "mono" }, c.address || "–"),
      el("td", { "data-ts": String(c.last_seen ?? "") }, ago(c.last_seen))));
  fill($("combiners"), combiners, 5, "No combiner has registered.");
  const names = new Map(state.combiners.map((c) => [c.id, c.name || c.id]));
  const clients = state.clients.map((c) =>
    el("tr", {},
      el("td", {}, c.name || "–"),
      el("td", { class: "mono" }, short(c.id)),
      el("td", {}, badge(c.status)),
      el("td", {}, names.get(c.combiner_id) || short(c.combiner_id)),
      el("td", { "data-ts": String(c.last_seen ?? "") }, ago(c.last_seen))));
  fill($("clients"), clients, 5, "No client has connected.");
  $("stat-combiners").textContent = `${state.combiners.filter((c) => c.status === "online").length} / ${state.combiners.length}`;
  $("stat-clients").textContent = `${state.clients.filter((c) => c.status === "online").length} / ${state.clients.length}`;
}

function sortedSessions() {
  return [...state.sessions.values()].sort((a, b) => (toMs(b.created_at) ?? 0) - (toMs(a.created_at) ?? 0));
}
function renderSessions() {
  const rows = sortedSessions().map((s) => {
    const row = el("tr", { class: `clickable${s.id === state.selected ? " selected" : ""}`, "data-session": s.id,
      onclick: () => selectSession(s.id) },
    el("td", { class: "mono" }, short(s.id)),
    el("td", {}, badge(s.status)),
    el("td", {}, s.mode || "sync"),
    el("td", {}, `${s.rounds_done ?? 0} / ${s.rounds ?? "–"}`),
    el("td", {}, `${s.aggregator || "–"} / ${s.strategy || "–"}`),
    el("td", {}, when(s.created_at)),
    el("td", { "data-ts": String(s.updated_at ?? "") }, ago(s.updated_at)));
    return row;
  });
  fill($("sessions"), rows, 7, "No session yet: start one with `fedn session start`.");
  $("stat-running").textContent = String(sortedSessions().filter((s) => s.status === "running").length);
}

async function selectSession(id) {
  state.selected = id;
  renderSessions();
  renderDetail();
  try { await loadRounds(id); } catch (err) { showNotice(`Cannot load the rounds: ${err.message}`); }
}

function roundsOf(sessionId) {
  return [...(state.rounds.get(sessionId)?.values() || [])].sort((a, b) => a.index - b.index);
}
// One series per metric: training summaries from round.metrics, federated evaluation from round.evaluation.
function metricSeries(rounds) {
  const series = new Map();
  const add = (label, index, summary) => {
    if (!summary || typeof summary.mean !== "number") return;
    if (!series.has(label)) series.set(label, new Map());
    series.get(label).set(index, summary.mean);
  };
  for (const r of rounds) {
    for (const [name, summary] of Object.entries(r.metrics || {})) add(name.startsWith("train") ? name : `train ${name}`, r.index, summary);
    for (const [name, summary] of Object.entries(r.evaluation?.metrics || {})) add(`eval ${name}`, r.index, summary);
  }
  return series;
}
const COLORS = ["#2f6fde", "#e0732c", "#1f9d55", "#9b51e0", "#d0342c", "#0aa2b5", "#c77c02"];

function renderChart(key, series, rounds) {
  const box = $(`chart-${key}`);
  const xs = [...new Set(rounds.filter((r) => [...series.values()].some((m) => m.has(r.index))).map((r) => r.index))].sort((a, b) => a - b);
  const names = [...series.keys()].sort();
  const data = [xs, ...names.map((n) => xs.map((x) => series.get(n).get(x) ?? null))];
  box.dataset.points = String(xs.length);
  window.fednDashboard.charts[key] = { x: xs, series: Object.fromEntries(names.map((n, i) => [n, data[i + 1]])) };
  const signature = names.join("|");
  const chart = state.charts[key];
  if (!xs.length || !window.uPlot) {
    chart?.plot.destroy();
    delete state.charts[key];
    box.replaceChildren(el("div", { class: "placeholder" }, xs.length ? "charts unavailable" : "no metric reported yet"));
    return;
  }
  if (chart && chart.signature === signature) {
    chart.plot.setData(data);
    return;
  }
  chart?.plot.destroy();
  box.replaceChildren();
  const plot = new window.uPlot({
    width: Math.max(320, box.clientWidth - 4), height: 260,
    scales: { x: { time: false } },
    axes: [{ label: "round", incrs: [1, 2, 5, 10, 20, 50, 100], values: (u, v) => v.map((x) => String(x)) }, { size: 56 }],
    series: [{ label: "round" }, ...names.map((n, i) => ({ label: n, stroke: COLORS[i % COLORS.length], width: 2, points: { size: 6 } }))],
  }, data, box);
  state.charts[key] = { plot, signature };
}

function renderDetail() {
  const s = state.sessions.get(state.selected);
  $("session-detail").hidden = !s;
  if (!s) return;
  $("session-title").textContent = `Session ${short(s.id)}`;
  $("session-meta").textContent = `${s.mode || "sync"} · ${s.aggregator} / ${s.strategy} · ${s.rounds_done ?? 0} of ${s.rounds} rounds · min ${s.min_clients} clients · started ${when(s.created_at)}`;
  $("session-status").className = `badge ${s.status}`;
  $("session-status").textContent = s.status;
  $("session-error").hidden = !s.error;
  $("session-error").textContent = s.error || "";
  const live = s.status === "running" || s.status === "pending";
  $("stop-button").hidden = !(live && canStop());
  $("stop-button").dataset.session = s.id;
  const rounds = roundsOf(s.id);
  const series = metricSeries(rounds);
  const pick = (re) => new Map([...series].filter(([name]) => re.test(name)));
  renderChart("loss", pick(/loss/i), rounds);
  renderChart("accuracy", pick(/acc/i), rounds);
  const longest = Math.max(1e-9, ...rounds.map((r) => r.duration_s || 0));
  const names = new Map(state.combiners.map((c) => [c.id, c.name || c.id]));
  const rows = rounds.map((r) => {
    const failures = r.failures || [];
    const evaluation = r.evaluation
      ? Object.entries(r.evaluation.metrics || {}).map(([k, v]) => `${k} ${fmt(v.mean)}`).join(" · ") + ` (${r.evaluation.num_clients} clients)`
      : "–";
    return el("tr", { "data-round": String(r.index) },
      el("td", {}, String(r.index)),
      el("td", {}, badge(r.status)),
      el("td", {}, el("span", { class: "bar dur" }, el("span", { style: `width:${(100 * (r.duration_s || 0)) / longest}%` })),
        r.duration_s != null ? `${r.duration_s.toFixed(1)} s` : "–"),
      el("td", {}, (r.combiners || []).map((c) => names.get(c) || short(c)).join(", ") || "–"),
      el("td", {}, `${r.num_updates ?? 0} / ${r.num_selected ?? 0}${r.num_rejected ? ` (${r.num_rejected} rejected)` : ""}`),
      el("td", {}, evaluation),
      el("td", {}, failures.length || r.reason
        ? el("ul", { class: "failures" }, ...(r.reason ? [el("li", {}, r.reason)] : []),
          ...failures.map((f) => el("li", {}, `${short(f.client_id)}${f.combiner_id ? ` @ ${names.get(f.combiner_id) || short(f.combiner_id)}` : ""}: ${f.error}`)))
        : "none"));
  });
  fill($("rounds"), rows, 7, "No round has started yet.");
}

function renderModels() {
  const known = new Set(state.models.map((m) => m.id));
  const rounds = new Map([...state.rounds.values()].flatMap((m) => [...m.values()]).map((r) => [r.id, r.index]));
  const rows = state.models.map((m) =>
    el("tr", { "data-model": m.id },
      el("td", { class: "mono", title: m.id }, short(m.id)),
      el("td", { class: "mono lineage", title: m.parent_id || "" }, m.parent_id ? `${known.has(m.parent_id) ? "↳ " : ""}${short(m.parent_id)}` : "seed"),
      el("td", { class: "mono" }, short(m.session_id)),
      el("td", { title: m.round_id || "" }, m.round_id ? (rounds.has(m.round_id) ? `#${rounds.get(m.round_id)}` : short(m.round_id)) : "–"),
      el("td", {}, (m.num_parameters ?? 0).toLocaleString()),
      el("td", {}, bytes(m.size_bytes)),
      el("td", {}, when(m.created_at)),
      el("td", {}, el("button", { class: "small", onclick: () => download(m.id) }, "Download"))));
  fill($("models"), rows, 8, "No model stored yet.");
  $("stat-models").textContent = String(state.modelTotal ?? state.models.length);
}

async function download(modelId) {
  try {
    const res = await api(`/models/${encodeURIComponent(modelId)}/download`, { raw: true, headers: { Accept: "application/octet-stream" } });
    const url = URL.createObjectURL(await res.blob());
    const a = el("a", { href: url, download: `${modelId}.safetensors` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    showNotice(`Download failed: ${err.message}`);
  }
}

async function stopSession() {
  const id = $("stop-button").dataset.session;
  $("stop-button").disabled = true;
  $("stop-error").hidden = true;
  try {
    const body = await api(`/sessions/${encodeURIComponent(id)}/stop`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
    window.fednDashboard.stop = { ok: true };
    if (body && body.id) state.sessions.set(body.id, body);
    renderDetail();
  } catch (err) {
    window.fednDashboard.stop = { ok: false, error: err.message };
    $("stop-error").hidden = false;
    $("stop-error").textContent = `Stop failed: ${err.message}`;
  } finally {
    $("stop-button").disabled = false;
  }
}

// -- live events ------------------------------------------------------------------------------------
function setLive(on, text) {
  $("live").className = `live ${on ? "on" : "off"}`;
  $("live").textContent = text;
}
function onEvent(kind, data) {
  if (kind === "hello") { loadAll(); return; } // subscribed first, so nothing between is missed
  if (kind === "session") {
    state.sessions.set(data.id, data);
    renderSessions();
    if (data.id === state.selected) renderDetail();
  } else if (kind === "round") {
    if (!state.rounds.has(data.session_id)) state.rounds.set(data.session_id, new Map());
    state.rounds.get(data.session_id).set(data.id, data);
    if (data.session_id === state.selected) renderDetail();
  } else if (kind === "models") {
    loadModels().catch((err) => showNotice(err.message));
  } else if (kind === "federation") {
    loadFederation().catch((err) => showNotice(err.message));
  }
}
async function follow() {
  state.streamAbort?.abort();
  const abort = new AbortController();
  state.streamAbort = abort;
  try {
    const headers = { Accept: "text/event-stream" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const res = await fetch("/api/v1/events", { headers, signal: abort.signal, cache: "no-store" });
    if (!res.ok) {
      let detail = res.statusText;
      try { detail = (await res.json()).detail || detail; } catch { /* not JSON */ }
      if (res.status === 401) { askForToken(`The reducer refused the token: ${detail}`); setLive(false, "no token"); return; }
      throw new Error(`${res.status}: ${detail}`);
    }
    setLive(true, "live");
    state.retryMs = 1000;
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let kind = "message";
        const lines = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) kind = line.slice(6).trim();
          else if (line.startsWith("data:")) lines.push(line.slice(5).trim());
        }
        if (lines.length) onEvent(kind, JSON.parse(lines.join("\n")));
      }
    }
    throw new Error("the stream ended");
  } catch (err) {
    if (abort.signal.aborted) return;
    setLive(false, "reconnecting…");
    console.info(`event stream: ${err.message}; reconnecting in ${state.retryMs / 1000} s`);
    setTimeout(follow, state.retryMs); // reconnect with backoff after a drop; not a polling loop
    state.retryMs = Math.min(15000, state.retryMs * 2);
  }
}

// -- wiring -----------------------------------------------------------------------------------------
function show(view) {
  state.view = view;
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === view);
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  if (view === "sessions") renderDetail();
}
function start() {
  takeTokenFromFragment();
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => show(tab.dataset.view));
  $("token-button").addEventListener("click", () => askForToken(""));
  $("token-clear").addEventListener("click", () => { setToken(null); $("token-input").value = ""; });
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setToken($("token-input").value.trim());
    $("token-input").value = "";
    $("token-panel").hidden = true;
    follow();
  });
  $("stop-button").addEventListener("click", stopSession);
  // Relative times ("12 s ago") age on screen; this re-renders text only and asks the server nothing.
  setInterval(() => {
    for (const td of document.querySelectorAll("td[data-ts]")) td.textContent = ago(/^[\d.]+$/.test(td.dataset.ts) ? Number(td.dataset.ts) : td.dataset.ts);
  }, 5000);
  window.fednDashboard.select = selectSession;
  window.fednDashboard.show = show;
  follow();
}
start();
