// orchestrator console: renders each view from the JSON API and keeps it live through
// Server-Sent Events. DOM is built with createElement/textContent only (never innerHTML with data).
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const state = { session: null, overview: null, view: null, feed: [], taskSource: null, reload: null };
const TERMINAL = new Set(["completed", "failed", "cancelled"]);

// ---------------------------------------------------------------------------------------------
// DOM helpers

function h(tag, attrs, ...children) {
  const svg = ["svg", "rect", "line", "text", "g", "title"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.setAttribute("class", value);
    else if (!svg && key in el && key !== "list" && key !== "form") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const short = (id) => (id || "").slice(0, 8);
const statusBadge = (s) => h("span", { class: `status s-${String(s || "unknown").replace(/[^a-z_]/g, "")}` }, s || "—");
const taskLink = (id) => h("a", { href: `#/task/${encodeURIComponent(id)}`, class: "mono", title: id }, short(id));
function when(t) {
  if (!t) return "—";
  const d = new Date(typeof t === "number" ? t : t);
  if (isNaN(d)) return t;
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
function ago(ms) {
  if (ms === null || ms === undefined) return "—";
  const s = Math.round(ms / 1000);
  return s < 60 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
}
function json(v) { return JSON.stringify(v, null, 2); }
function table(caption, headers, rows, empty) {
  if (!rows.length) return h("p", { class: "empty" }, empty || "Nothing here.");
  return h("table", {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col", class: x.startsWith("#") ? "num" : "" }, x.replace(/^#/, ""))))),
    h("tbody", {}, rows));
}
function toast(message, bad) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = bad ? "toast bad" : "toast";
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 8000);
}

// ---------------------------------------------------------------------------------------------
// API

async function get(path) {
  const res = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || `${res.status} ${res.statusText}`);
  return body;
}

// Every action: POST with the CSRF token and, when the admin gave one, the bearer token.
async function act(path, body, done) {
  const headers = { "Content-Type": "application/json", "X-CSRF-Token": CSRF };
  const token = sessionStorage.getItem("console-token");
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    const res = await fetch(path, { method: "POST", headers, body: JSON.stringify(body || {}) });
    const answer = await res.json().catch(() => ({}));
    if (!res.ok) {
      toast(`${res.status}: ${answer.error || res.statusText}`, true);
      return null;
    }
    if (done) toast(done(answer));
    return answer;
  } catch (err) {
    toast(`Request failed: ${err.message}`, true);
    return null;
  }
}

const can = () => state.session && state.session.actions;

// ---------------------------------------------------------------------------------------------
// Live events

function connectLive() {
  const live = document.getElementById("live");
  const source = new EventSource("/api/events");
  source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  source.addEventListener("overview", (e) => {
    state.overview = JSON.parse(e.data);
    document.getElementById("dead-count").textContent = state.overview.dead || "";
    if (state.view === "overview") renderOverviewData();
  });
  source.addEventListener("task", (e) => {
    const event = JSON.parse(e.data);
    state.feed.unshift(event);
    state.feed.length = Math.min(state.feed.length, 50);
    if (state.view === "overview") renderFeed();
    if (state.view === "tasks") updateTaskRow(event);
  });
  source.addEventListener("resource", () => { if (state.view === "tenants") softReload(); });
  source.addEventListener("dns", () => { if (state.view === "dns") softReload(); });
  source.addEventListener("resync", () => softReload());
}

// Reload the current view once events settle (bursts coalesce).
function softReload() {
  clearTimeout(state.reload);
  state.reload = setTimeout(() => route(true), 400);
}

// ---------------------------------------------------------------------------------------------
// Auth box: the token lives in sessionStorage only (gone with the tab), never in a cookie.

function renderAuth() {
  const box = document.getElementById("auth");
  box.replaceChildren();
  if (!can()) {
    box.append(h("span", { class: "badge-ro", title: "CONSOLE_READ_ONLY is set, or no CONSOLE_TOKEN: nothing can be changed here" }, "read-only"));
    return;
  }
  if (sessionStorage.getItem("console-token")) {
    box.append(h("button", { type: "button", id: "forget-token", onclick: () => { sessionStorage.removeItem("console-token"); renderAuth(); toast("Token forgotten"); } }, "Forget token"));
    return;
  }
  const input = h("input", { type: "password", id: "token", autocomplete: "off", placeholder: "admin token" });
  box.append(h("form", {
    onsubmit: (e) => {
      e.preventDefault();
      if (input.value) { sessionStorage.setItem("console-token", input.value); renderAuth(); toast("Token kept for this tab"); }
    },
  }, h("label", { htmlFor: "token", class: "sr-only" }, "Admin token (CONSOLE_TOKEN)"), input, h("button", { type: "submit", id: "save-token" }, "Use")));
}

// ---------------------------------------------------------------------------------------------
// Router

const views = { overview, tasks, task, dead, workers, tenants, dns, enqueue };

async function route(keepFocus) {
  const hash = location.hash.replace(/^#\/?/, "") || "overview";
  const [path, query] = hash.split("?");
  const [name, ...rest] = path.split("/");
  const view = views[name] ? name : "overview";
  if (state.taskSource && (view !== "task" || !keepFocus)) { state.taskSource.close(); state.taskSource = null; }
  state.view = view;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === (view === "task" ? "tasks" : view)) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const main = document.getElementById("view");
  try {
    const content = await views[view](decodeURIComponent(rest.join("/")), new URLSearchParams(query || ""));
    main.replaceChildren(content);
  } catch (err) {
    main.replaceChildren(h("h1", {}, "Error"), h("p", { class: "notice bad" }, err.message));
  }
  document.title = `${main.querySelector("h1") ? main.querySelector("h1").textContent : "console"} · orchestrator`;
  if (!keepFocus) main.focus({ preventScroll: true });
}

// ---------------------------------------------------------------------------------------------
// Overview

async function overview() {
  if (!state.overview) state.overview = await get("/api/overview");
  return h("div", {},
    h("h1", {}, "Overview"),
    h("div", { class: "cards", id: "cards" }),
    h("div", { class: "grid2" },
      h("section", { class: "panel chart", "aria-labelledby": "chart-title" },
        h("h2", { id: "chart-title" }, "Finished per minute, last hour"),
        h("div", { id: "chart" })),
      h("section", { class: "panel", "aria-labelledby": "lists-title" },
        h("h2", { id: "lists-title" }, "Queues"),
        h("div", { id: "lists" }))),
    h("section", { class: "panel", "aria-labelledby": "feed-title" },
      h("h2", { id: "feed-title" }, "Live task events"),
      h("ul", { class: "feed", id: "feed", "aria-live": "off" })));
}

function renderOverviewData() {
  const o = state.overview;
  const cards = document.getElementById("cards");
  if (!o || !cards) return;
  const card = (label, value, alert, href) => h("div", { class: `card${alert ? " alert" : ""}` },
    h("div", { class: "label" }, href ? h("a", { href }, label) : label),
    h("div", { class: "value", "data-card": label }, value));
  cards.replaceChildren(
    card("Queued", o.queued, false, "#/tasks?state=queued"),
    card("In flight", o.in_flight, false, "#/tasks?state=in_flight"),
    card("Waiting", o.waiting),
    card("Delayed", o.delayed, false, "#/tasks?state=delayed"),
    card("Dead", o.dead, o.dead > 0, "#/dead"),
    card("Workers", `${o.workers_alive}/${o.workers}`, o.workers_alive === 0, "#/workers"));
  const max = Math.max(1, ...o.lists.map((l) => l.depth));
  document.getElementById("lists").replaceChildren(table("Tasks waiting in each list",
    ["List", "#Depth", ""],
    o.lists.map((l) => h("tr", {},
      h("td", { class: "mono" }, l.name),
      h("td", { class: "num" }, l.depth),
      h("td", {}, h("svg", { class: "depthbar", viewBox: "0 0 100 8", preserveAspectRatio: "none", "aria-hidden": "true" },
        h("rect", { x: 0, y: 0, height: 8, width: (100 * l.depth) / max, rx: 3 })))))));
  renderChart(o.per_minute);
  renderFeed();
}

function renderChart(minutes) {
  const el = document.getElementById("chart");
  if (!el) return;
  const W = 600, H = 180, left = 34, bottom = 22, top = 8;
  const max = Math.max(1, ...minutes.map((m) => m.completed + m.failed));
  const bw = (W - left) / minutes.length;
  const y = (v) => top + (H - top - bottom) * (1 - v / max);
  const completed = minutes.reduce((a, m) => a + m.completed, 0);
  const failed = minutes.reduce((a, m) => a + m.failed, 0);
  const svg = h("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "chart-desc" },
    h("title", { id: "chart-desc" }, `Last hour: ${completed} completed, ${failed} failed`));
  for (const v of [0, Math.round(max / 2), max]) {
    svg.append(h("line", { class: "grid", x1: left, x2: W, y1: y(v), y2: y(v) }),
      h("text", { class: "axis", x: left - 6, y: y(v) + 4, "text-anchor": "end" }, v));
  }
  minutes.forEach((m, i) => {
    const x = left + i * bw + 1;
    const hc = y(0) - y(m.completed);
    const hf = y(0) - y(m.failed);
    const tip = `${when(m.at)}: ${m.completed} completed, ${m.failed} failed`;
    if (m.completed) svg.append(h("rect", { class: "c-completed", x, y: y(0) - hc, width: bw - 2, height: hc }, h("title", {}, tip)));
    if (m.failed) svg.append(h("rect", { class: "c-failed", x, y: y(0) - hc - hf, width: bw - 2, height: hf }, h("title", {}, tip)));
    if (i % 15 === 0 || i === minutes.length - 1) {
      const last = i === minutes.length - 1;
      svg.append(h("text", { class: "axis", x: last ? W : x + bw / 2, y: H - 6, "text-anchor": last ? "end" : "middle" }, last ? "now" : `-${minutes.length - 1 - i} min`));
    }
  });
  el.replaceChildren(svg, h("div", { class: "legend" },
    h("span", { class: "l-completed" }, `completed (${completed})`),
    h("span", { class: "l-failed" }, `failed (${failed})`)));
}

function renderFeed() {
  const feed = document.getElementById("feed");
  if (!feed) return;
  if (!state.feed.length) { feed.replaceChildren(h("li", { class: "empty" }, "Waiting for task events…")); return; }
  feed.replaceChildren(...state.feed.slice(0, 30).map((e) => h("li", {},
    h("time", {}, when(e.timestamp)), " ", taskLink(e.task_id), " ", h("span", { class: "mono" }, e.task_type), " ",
    statusBadge(e.status), " ", e.percentage !== undefined ? `${e.percentage}% ` : "", e.message || "",
    e.error && e.status !== "completed" ? h("span", { class: "error-text" }, ` — ${e.error}`) : "")));
}

// ---------------------------------------------------------------------------------------------
// Tasks

const STATES = ["", "queued", "processing", "retrying", "completed", "failed", "cancelled", "in_flight", "waiting", "delayed", "dead"];

async function tasks(_, params) {
  const [rows, types] = await Promise.all([get(`/api/tasks?${params.toString()}`), get("/api/types")]);
  const stateSel = h("select", { id: "f-state", name: "state" }, STATES.map((s) => h("option", { value: s, selected: params.get("state") === s }, s || "any")));
  const typeSel = h("select", { id: "f-type", name: "type" }, h("option", { value: "" }, "any"),
    types.map((t) => h("option", { value: t.type, selected: params.get("type") === t.type }, t.type)));
  const q = h("input", { id: "f-q", name: "q", type: "search", value: params.get("q") || "", placeholder: "id, user or slug" });
  const form = h("form", { class: "toolbar", role: "search", onsubmit: (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    if (stateSel.value) p.set("state", stateSel.value);
    if (typeSel.value) p.set("type", typeSel.value);
    if (q.value.trim()) p.set("q", q.value.trim());
    location.hash = `#/tasks?${p.toString()}`;
  } },
    h("div", { class: "field" }, h("label", { htmlFor: "f-state" }, "State"), stateSel),
    h("div", { class: "field" }, h("label", { htmlFor: "f-type" }, "Type"), typeSel),
    h("div", { class: "field" }, h("label", { htmlFor: "f-q" }, "Search"), q),
    h("button", { type: "submit", class: "primary" }, "Filter"));
  return h("div", {}, h("h1", {}, "Tasks"), form,
    h("div", { class: "panel" }, table(`${rows.length} task(s), newest first`,
      ["Task", "Type", "Status", "Progress", "User", "Where", "Updated"],
      rows.map(taskRow), "No task matches.")));
}

function taskRow(t) {
  const pct = Number(t.percentage || 0);
  return h("tr", { "data-task": t.id },
    h("td", {}, taskLink(t.id)),
    h("td", { class: "mono" }, t.type || "—"),
    h("td", { "data-field": "status" }, statusBadge(t.status)),
    h("td", { class: "progress-cell", "data-field": "progress" },
      h("progress", { max: 100, value: pct, "aria-label": `progress of ${short(t.id)}` }), " ",
      h("small", {}, `${pct}% ${t.message || ""}`)),
    h("td", {}, t.user_id || "—"),
    h("td", { class: "mono" }, t.place || "—"),
    h("td", {}, when(t.updated_at)));
}

function updateTaskRow(e) {
  const row = document.querySelector(`tr[data-task="${CSS.escape(e.task_id)}"]`);
  if (!row) return;
  row.querySelector('[data-field="status"]').replaceChildren(statusBadge(e.status));
  row.querySelector('[data-field="progress"]').replaceChildren(
    h("progress", { max: 100, value: e.percentage || 0, "aria-label": `progress of ${short(e.task_id)}` }), " ",
    h("small", {}, `${e.percentage || 0}% ${e.message || ""}`));
}

// ---------------------------------------------------------------------------------------------
// One task

async function task(id) {
  const d = await get(`/api/tasks/${encodeURIComponent(id)}`);
  const t = d.task || {};
  const status = t.status || (d.dead ? "failed" : "queued");
  const root = h("div", {});
  const actions = h("div", { class: "actions", id: "task-actions" });
  if (can() && !TERMINAL.has(status) && !d.dead) {
    actions.append(h("button", { type: "button", class: "danger", id: "cancel-task", onclick: () =>
      act(`/api/tasks/${encodeURIComponent(id)}/cancel`, {}, () => "Cancellation requested") }, "Cancel task"));
  }
  if (can() && d.dead) {
    actions.append(
      h("button", { type: "button", class: "primary", id: "retry-task", onclick: async () => {
        if (await act(`/api/dead/${encodeURIComponent(id)}/retry`, {}, () => "Queued again")) route(true);
      } }, "Retry"),
      h("button", { type: "button", class: "danger", id: "purge-task", onclick: async () => {
        if (await act(`/api/dead/${encodeURIComponent(id)}/purge`, {}, () => "Dead letter purged")) route(true);
      } }, "Purge"));
  }
  const pct = Number(t.percentage || 0);
  const summary = h("dl", { class: "summary", id: "task-summary" });
  const put = (k, v) => summary.append(h("dt", {}, k), h("dd", { "data-field": k }, v));
  put("Status", statusBadge(status));
  put("Progress", h("span", {}, h("progress", { id: "task-progress", max: 100, value: pct, "aria-label": "task progress" }), " ",
    h("span", { id: "task-percentage" }, `${pct}%`)));
  put("Step", h("span", { id: "task-step" }, `${t.step || 0} of ${t.total_steps || 0}: ${t.message || ""}`));
  put("Attempts", `${t.attempts || 0}${t.recoveries && t.recoveries !== "0" ? ` (recovered ${t.recoveries}×)` : ""}`);
  put("Worker", t.worker || (d.held && d.held.worker) || "—");
  put("User", t.user_id || "—");
  put("Where", d.held ? d.held.place : d.dead ? "dead-letter list" : TERMINAL.has(status) ? "finished" : "queue list");
  put("Created", t.created_at || "—");
  put("Updated", t.updated_at || "—");
  if (t.error) put("Error", h("span", { class: "error-text" }, t.error));
  if (d.dead) put("Dead-lettered", h("span", { class: "error-text" }, `${d.dead.failed_at} after ${d.dead.attempts} attempt(s): ${d.dead.reason}`));

  root.append(
    h("h1", {}, h("span", { class: "mono" }, t.type || (d.envelope && d.envelope.body && d.envelope.body.type) || "task"), " ", h("span", { class: "mono muted" }, id)),
    h("div", { class: "grid2" },
      h("section", { class: "panel", "aria-labelledby": "sum-title" }, h("h2", { id: "sum-title" }, "Summary"), summary, actions),
      h("section", { class: "panel", "aria-labelledby": "env-title" }, h("h2", { id: "env-title" }, "Envelope"),
        d.envelope ? [h("p", { class: "muted" }, d.envelope.list.startsWith("queue:") ? `from ${d.envelope.list}` : d.envelope.list), h("pre", { id: "envelope" }, json(d.envelope.body))]
          : h("p", { class: "empty" }, "The queue keeps a task's body only until it finishes."))),
    h("section", { class: "panel", "aria-labelledby": "steps-title" }, h("h2", { id: "steps-title" }, "Steps and attempts"),
      h("table", { class: "steps" }, h("caption", {}, "Every update of the task, live"),
        h("thead", {}, h("tr", {}, ["#", "Time", "Event", "Attempt", "Step", "Message"].map((x) => h("th", { scope: "col" }, x)))),
        h("tbody", { id: "steps" }))),
    h("section", { class: "panel", "aria-labelledby": "res-title" }, h("h2", { id: "res-title" }, "Result"),
      t.result !== undefined && t.result !== "" ? h("pre", { id: "result" }, json(t.result)) : h("p", { class: "empty", id: "result" }, "No result yet.")));
  state.taskEnded = TERMINAL.has(status) || Boolean(d.dead);
  followTask(id);
  return root;
}

// The task's own stream: ids are its `seq`, so EventSource's automatic reconnect (Last-Event-ID)
// resumes exactly after the last update shown.
function followTask(id) {
  if (state.taskSource) state.taskSource.close();
  const source = new EventSource(`/api/tasks/${encodeURIComponent(id)}/events`);
  state.taskSource = source;
  source.addEventListener("task", (e) => {
    const ev = JSON.parse(e.data);
    const steps = document.getElementById("steps");
    if (!steps) return;
    steps.append(h("tr", { "data-seq": ev.seq },
      h("td", { class: "num" }, ev.seq), h("td", {}, when(ev.timestamp)), h("td", {}, statusBadge(ev.status), " ", h("small", { class: "muted" }, ev.type)),
      h("td", { class: "num" }, ev.attempts || ""), h("td", { class: "num" }, ev.total_steps ? `${ev.step}/${ev.total_steps}` : ""),
      h("td", {}, ev.message || "", ev.error ? h("div", { class: "error-text" }, ev.error) : "")));
    const progress = document.getElementById("task-progress");
    if (progress) progress.value = ev.percentage || 0;
    const pct = document.getElementById("task-percentage");
    if (pct) pct.textContent = `${ev.percentage || 0}%`;
    const step = document.getElementById("task-step");
    if (step) step.textContent = `${ev.step || 0} of ${ev.total_steps || 0}: ${ev.message || ""}`;
    const field = (name, value) => {
      const dd = document.querySelector(`#task-summary [data-field="${name}"]`);
      if (dd) dd.replaceChildren(value);
    };
    field("Status", statusBadge(ev.status));
    if (ev.attempts) field("Attempts", String(ev.attempts));
    if (ev.timestamp) field("Updated", ev.timestamp);
    if (ev.error && ev.status !== "completed") field("Error", h("span", { class: "error-text" }, ev.error));
    // Once it ends while shown, read it again (result, where it is now) — once.
    if (TERMINAL.has(ev.status) && !state.taskEnded) {
      state.taskEnded = true;
      softReload();
    }
    if (TERMINAL.has(ev.status)) {
      const cancel = document.getElementById("cancel-task");
      if (cancel) cancel.remove();
      if (ev.result !== undefined) {
        const result = document.getElementById("result");
        if (result) result.replaceWith(h("pre", { id: "result" }, json(ev.result)));
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Dead letters

async function dead() {
  const entries = await get("/api/dead");
  const selected = () => [...document.querySelectorAll("input[data-dead]:checked")].map((c) => c.dataset.dead);
  const bulk = can() ? h("div", { class: "actions", id: "dead-bulk" },
    h("button", { type: "button", class: "primary", id: "retry-selected", onclick: async () => {
      const ids = selected();
      if (!ids.length) return toast("Select entries first", true);
      if (await act("/api/dead/retry", { ids }, (a) => `Queued again: ${a.retried.length}`)) route(true);
    } }, "Retry selected"),
    h("button", { type: "button", id: "retry-all", onclick: async () => {
      if (await act("/api/dead/retry", { all: true }, (a) => `Queued again: ${a.retried.length}`)) route(true);
    } }, "Retry all"),
    h("button", { type: "button", class: "danger", id: "purge-selected", onclick: async () => {
      const ids = selected();
      if (!ids.length) return toast("Select entries first", true);
      if (await act("/api/dead/purge", { ids }, (a) => `Purged: ${a.purged}`)) route(true);
    } }, "Purge selected"),
    confirmButton("purge-all", "Purge all", async () => {
      if (await act("/api/dead/purge", { all: true }, (a) => `Purged: ${a.purged}`)) route(true);
    })) : null;
  const rows = entries.map((e) => h("tr", { "data-dead-row": e.id },
    can() ? h("td", {}, h("input", { type: "checkbox", "data-dead": e.id, "aria-label": `select ${short(e.id)}` })) : null,
    h("td", {}, taskLink(e.id)),
    h("td", { class: "mono" }, e.type || "?"),
    h("td", { class: "mono" }, e.queue),
    h("td", { class: "error-text" }, e.reason),
    h("td", { class: "num" }, e.attempts),
    h("td", {}, when(e.failed_at)),
    h("td", {}, h("details", {}, h("summary", {}, "body"), h("pre", {}, typeof e.body === "string" ? e.body : json(e.body)))),
    can() ? h("td", {}, h("div", { class: "actions" },
      h("button", { type: "button", "data-retry": e.id, "aria-label": `Retry ${short(e.id)}`, onclick: async () => {
        if (await act(`/api/dead/${encodeURIComponent(e.id)}/retry`, {}, () => `Queued again: ${short(e.id)}`)) route(true);
      } }, "Retry"),
      h("button", { type: "button", class: "danger", "data-purge": e.id, "aria-label": `Purge ${short(e.id)}`, onclick: async () => {
        if (await act(`/api/dead/${encodeURIComponent(e.id)}/purge`, {}, () => `Purged: ${short(e.id)}`)) route(true);
      } }, "Purge"))) : null));
  const headers = [...(can() ? [""] : []), "Task", "Type", "From", "Reason", "#Attempts", "Failed", "Body", ...(can() ? ["Actions"] : [])];
  return h("div", {}, h("h1", {}, "Dead letters"), bulk,
    h("div", { class: "panel" }, table(`${entries.length} entr${entries.length === 1 ? "y" : "ies"}, newest first`, headers, rows, "The dead-letter list is empty.")));
}

// A destructive button that asks to be pressed twice (no modal dialog).
function confirmButton(id, label, run) {
  const button = h("button", { type: "button", class: "danger", id });
  button.textContent = label;
  button.addEventListener("click", async () => {
    if (button.dataset.armed) { delete button.dataset.armed; button.textContent = label; await run(); return; }
    button.dataset.armed = "1";
    button.textContent = `${label}: press again to confirm`;
    setTimeout(() => { delete button.dataset.armed; button.textContent = label; }, 5000);
  });
  return button;
}

// ---------------------------------------------------------------------------------------------
// Workers, tenants, DNS

async function workers() {
  const list = await get("/api/workers");
  return h("div", {}, h("h1", {}, "Workers"), h("div", { class: "panel" }, table(`${list.length} registered worker(s)`,
    ["Worker", "Alive", "Heartbeat", "Started", "#Concurrency", "#In flight", "Tasks"],
    list.map((w) => h("tr", {},
      h("td", { class: "mono" }, w.id), h("td", {}, statusBadge(w.alive ? "yes" : "no")),
      h("td", {}, ago(w.heartbeat_age_ms)), h("td", {}, w.started_at || "—"),
      h("td", { class: "num" }, w.concurrency ?? "—"), h("td", { class: "num" }, w.in_flight),
      h("td", {}, w.tasks.length ? w.tasks.map((t) => h("div", {}, taskLink(t.id), " ", h("span", { class: "mono" }, t.type || ""))) : "—"))),
    "No worker registered.")));
}

async function tenants() {
  const d = await get("/api/tenants");
  const rows = d.tenants.map((t) => h("tr", {},
    h("td", {}, t.kind), h("td", { class: "mono" }, t.slug), h("td", {}, statusBadge(t.status)),
    h("td", {}, h("span", { class: "mono" }, t.host)), h("td", {}, t.owner || "platform"),
    h("td", {}, t.containers.length ? t.containers.map((c) => h("div", {},
      h("span", { class: "mono" }, c.name), " ", statusBadge(c.state), c.health ? [" ", statusBadge(c.health)] : "",
      c.route ? h("div", { class: "mono muted" }, c.route) : "")) : h("span", { class: "muted" }, "no containers")),
    h("td", {}, t.certificate ? h("div", {}, h("span", { class: "mono" }, t.certificate.name), h("div", {},
      statusBadge(t.certificate.status), ` expires ${t.certificate.not_after.slice(0, 10)} (${t.certificate.days_left} days)`))
      : h("span", { class: "muted" }, "none"))));
  return h("div", {}, h("h1", {}, "Teams & sandboxes"),
    d.error ? h("p", { class: "notice bad" }, d.error) : null,
    h("div", { class: "panel" }, table(`${d.tenants.length} tenant(s)`,
      ["Kind", "Slug", "Status", "Host", "Owner", "Containers and routes", "Certificate"], rows, "No tenant yet.")));
}

async function dns() {
  const z = await get("/api/dns");
  return h("div", {}, h("h1", {}, "DNS zone"),
    h("p", {}, "Zone ", h("span", { class: "mono" }, z.origin), ", serial ", h("span", { class: "mono" }, z.serial)),
    h("div", { class: "panel" }, table(`${z.records.length} record set(s)`, ["Name", "Type", "#TTL", "Values"],
      z.records.map((r) => h("tr", {}, h("td", { class: "mono" }, r.owner), h("td", {}, r.type), h("td", { class: "num" }, r.ttl),
        h("td", { class: "mono" }, r.values.join("\n")))), "The zone holds no record yet.")));
}

// ---------------------------------------------------------------------------------------------
// Enqueue: a form generated from the type's JSON Schema (queues/schemas); the server validates
// with the same schema the worker uses and says what is wrong.

async function enqueue() {
  if (!can()) return h("div", {}, h("h1", {}, "Enqueue"), h("p", { class: "notice info" }, "This console is read-only."));
  const types = await get("/api/types");
  const typeSel = h("select", { id: "e-type", required: true }, types.map((t) => h("option", { value: t.type }, t.type)));
  const fields = h("div", { id: "payload-fields", class: "form-grid" });
  const raw = h("textarea", { id: "e-raw", "aria-describedby": "raw-hint" });
  const rawToggle = h("input", { type: "checkbox", id: "e-raw-toggle" });
  const describe = h("p", { class: "muted", id: "type-desc" });
  const render = () => {
    const t = types.find((x) => x.type === typeSel.value);
    describe.textContent = (t.schema && t.schema.description) || "";
    fields.replaceChildren(...schemaFields(t.schema || {}));
    raw.value = json(collect(t.schema || {}));
  };
  typeSel.addEventListener("change", render);
  rawToggle.addEventListener("change", () => {
    const t = types.find((x) => x.type === typeSel.value);
    if (rawToggle.checked) raw.value = json(collect(t.schema || {}));
    fields.hidden = rawToggle.checked;
    rawBox.hidden = !rawToggle.checked;
  });
  const rawBox = h("div", { class: "field", hidden: true }, h("label", { htmlFor: "e-raw" }, "Payload (JSON)"), raw,
    h("span", { class: "hint", id: "raw-hint" }, "Checked against the type's schema when you submit."));
  const priority = h("select", { id: "e-priority" }, h("option", { value: "normal" }, "normal"), h("option", { value: "high" }, "high"));
  const user = h("input", { id: "e-user", placeholder: "none: the platform's task" });
  const key = h("input", { id: "e-key" });
  const outcome = h("div", { id: "enqueue-outcome", "aria-live": "polite" });
  const form = h("form", { novalidate: true, onsubmit: async (e) => {
    e.preventDefault();
    const t = types.find((x) => x.type === typeSel.value);
    let payload;
    try { payload = rawToggle.checked ? JSON.parse(raw.value || "{}") : collect(t.schema || {}); }
    catch (err) { outcome.replaceChildren(h("p", { class: "notice bad" }, `Payload is not JSON: ${err.message}`)); return; }
    const answer = await act("/api/tasks", { type: t.type, priority: priority.value, user_id: user.value, idempotency_key: key.value, payload },
      (a) => `Enqueued ${short(a.id)}`);
    if (answer) outcome.replaceChildren(h("p", { class: "notice info" }, "Enqueued as ", taskLink(answer.id), ". ", h("a", { href: `#/task/${answer.id}` }, "Follow it")));
    else outcome.replaceChildren(h("p", { class: "notice bad", id: "enqueue-error" }, document.getElementById("toast").textContent));
  } },
    h("fieldset", {}, h("legend", {}, "Task"), h("div", { class: "form-grid" },
      h("div", { class: "field" }, h("label", { htmlFor: "e-type" }, "Type"), typeSel),
      h("div", { class: "field" }, h("label", { htmlFor: "e-priority" }, "Priority"), priority),
      h("div", { class: "field" }, h("label", { htmlFor: "e-user" }, "User id"), user),
      h("div", { class: "field" }, h("label", { htmlFor: "e-key" }, "Idempotency key"), key)), describe),
    h("fieldset", {}, h("legend", {}, "Payload"),
      h("div", { class: "field check" }, rawToggle, h("label", { htmlFor: "e-raw-toggle" }, "Edit as JSON")), fields, rawBox),
    h("button", { type: "submit", class: "primary", id: "enqueue-submit" }, "Enqueue"), outcome);
  render();
  return h("div", {}, h("h1", {}, "Enqueue a task"), h("div", { class: "panel" }, form));
}

// One input per property of an object schema; anything richer becomes a JSON text area.
function schemaFields(schema) {
  const props = schema.properties || {};
  const required = new Set(schema.required || []);
  return Object.entries(props).map(([name, p]) => {
    const id = `p-${name}`;
    const label = h("label", { htmlFor: id }, name, required.has(name) ? " (required)" : "");
    const hint = p.description ? h("span", { class: "hint", id: `${id}-hint` }, p.description) : null;
    const common = { id, "data-prop": name, "aria-describedby": hint ? `${id}-hint` : null, required: required.has(name) };
    let input;
    if (p.type === "boolean") {
      input = h("input", { ...common, type: "checkbox", "data-kind": "boolean" });
      return h("div", { class: "field check" }, input, label, hint);
    }
    if (p.enum) input = h("select", { ...common, "data-kind": "string" }, h("option", { value: "" }, "—"), p.enum.map((v) => h("option", { value: v }, v)));
    else if (p.type === "integer" || p.type === "number") input = h("input", { ...common, type: "number", min: p.minimum, max: p.maximum, step: p.type === "integer" ? 1 : "any", "data-kind": p.type });
    else if (p.type === "string") input = h("input", { ...common, type: "text", maxLength: p.maxLength, "data-kind": "string" });
    else if (p.type === "array" && p.items && p.items.type === "string") input = h("textarea", { ...common, "data-kind": "lines", placeholder: "one per line" });
    else input = h("textarea", { ...common, "data-kind": "json", placeholder: "JSON" });
    return h("div", { class: "field" }, label, input, hint);
  });
}

// The payload from the generated fields: empty fields are left out.
function collect() {
  const out = {};
  for (const el of document.querySelectorAll("[data-prop]")) {
    const name = el.dataset.prop;
    switch (el.dataset.kind) {
      case "boolean": if (el.checked) out[name] = true; break;
      case "integer": case "number": if (el.value !== "") out[name] = Number(el.value); break;
      case "lines": { const v = el.value.split("\n").map((s) => s.trim()).filter(Boolean); if (v.length) out[name] = v; break; }
      case "json": if (el.value.trim()) { try { out[name] = JSON.parse(el.value); } catch { out[name] = el.value; } } break;
      default: if (el.value !== "") out[name] = el.value;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

async function start() {
  state.session = await get("/api/session");
  document.getElementById("nav-enqueue").parentElement.hidden = !can();
  renderAuth();
  connectLive();
  window.addEventListener("hashchange", () => route(false));
  await route(true);
  if (state.view === "overview") renderOverviewData();
}

// Re-render the overview's data once its skeleton is in place.
const observer = new MutationObserver(() => { if (state.view === "overview" && document.getElementById("cards") && !document.getElementById("cards").childElementCount) renderOverviewData(); });
document.addEventListener("DOMContentLoaded", () => {
  observer.observe(document.getElementById("view"), { childList: true });
  start().catch((err) => { document.getElementById("view").replaceChildren(h("p", { class: "notice bad" }, err.message)); });
});
