// One run, live: EventSource on /api/runs/<id>/events; when the stream fails, polling of
// /api/runs/<id>?after=<seq>. Each message brings the events after the last seq this page has
// and the run's state; the page appends log lines by seq, so a reconnect neither loses nor
// doubles one. The page renders only from data, with textContent.
import { $, el, fmtDuration, fmtTime, progressText, runRow, show, token } from "/static/common.js";

const LOG_KEEP = 2000; // log lines kept on the page
const POLL_MS = 1000;
const STREAM_FAILURES = 3; // errors in a row before polling
const RETRY_STREAM_EVERY = 5; // polls between attempts to stream again

const runId = decodeURIComponent(location.pathname.replace(/^\/runs\//, ""));
const api = `/api/runs/${encodeURIComponent(runId)}`;
const secret = token();

let seq = null; // events seen up to here (null: none yet)
let lines = [];
let state = null;
let receivedAt = 0;
let source = null;
let failures = 0;
let polling = false;
let polls = 0;

function apply(msg) {
  if (msg.since === null || seq === null || msg.since > seq) {
    if (!msg.state) return; // a part of a catch-up the page cannot place: the next state resets
    lines = (msg.state.log || []).slice();
  } else {
    for (const ev of msg.events) {
      if (ev.seq > seq && ev.kind === "log") lines.push(ev.text);
    }
    if (lines.length > LOG_KEEP) lines = lines.slice(-LOG_KEEP);
  }
  seq = Math.max(seq ?? 0, msg.seq);
  if (msg.state) {
    state = msg.state;
    receivedAt = Date.now() / 1000;
  }
  render();
}

function setMode(text) { $("tether-mode").textContent = text; }

function disconnected(text) {
  const note = $("tether-disconnected");
  note.textContent = text || "";
  show(note, Boolean(text));
}

function ended() { return state !== null && state.terminal; }

// -- the stream --------------------------------------------------------------------------------

function stream() {
  polling = false;
  const url = seq === null ? `${api}/events` : `${api}/events?after=${seq}`;
  source = new EventSource(url);
  source.onopen = () => { failures = 0; disconnected(""); setMode("live"); };
  source.onmessage = (e) => {
    failures = 0;
    apply(JSON.parse(e.data));
    if (ended()) stop("ended");
  };
  source.onerror = () => {
    if (ended()) { stop("ended"); return; }
    failures += 1;
    disconnected("connection lost; reconnecting…");
    setMode("reconnecting");
    if (source.readyState === EventSource.CLOSED || failures >= STREAM_FAILURES) {
      source.close();
      source = null;
      poll();
    }
  };
}

function stop(mode) {
  if (source) { source.close(); source = null; }
  polling = false;
  disconnected("");
  setMode(mode);
}

// -- polling, when the stream fails ------------------------------------------------------------

async function poll() {
  polling = true;
  setMode("polling");
  let again = POLL_MS;
  try {
    const url = seq === null ? api : `${api}?after=${seq}`;
    const resp = await fetch(url, { cache: "no-store" });
    if (resp.status === 404) {
      const body = await resp.json();
      const nf = $("tether-notfound");
      nf.textContent = body.error;
      show(nf, true);
      stop("not found");
      return;
    }
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const msg = await resp.json();
    apply(msg);
    disconnected("");
    if (ended()) { stop("ended"); return; }
    if (!msg.state) again = 0; // more events to fetch
    polls += 1;
    if (polls % RETRY_STREAM_EVERY === 0) { failures = 0; stream(); return; }
  } catch (err) {
    disconnected(`cannot reach tether serve (${err.message}); retrying`);
  }
  if (polling) setTimeout(poll, again);
}

// -- actions -----------------------------------------------------------------------------------

async function act(action) {
  const notice = $("tether-notice");
  notice.dataset.level = "info";
  notice.textContent = `${action}…`;
  const headers = secret ? { Authorization: `Bearer ${secret}` } : {};
  try {
    const resp = await fetch(`${api}/${action}`, { method: "POST", headers });
    const body = await resp.json();
    if (!resp.ok) {
      notice.dataset.level = "error";
      notice.textContent = resp.status === 403 && !secret
        ? "this page has no token: open the URL tether serve printed (…/?token=…)"
        : body.error;
      return;
    }
    if (action === "cancel") {
      notice.textContent = "cancel requested";
    } else {
      location.href = `/runs/${encodeURIComponent(body.run.id)}`;
    }
  } catch (err) {
    notice.dataset.level = "error";
    notice.textContent = `${action} failed: ${err.message}`;
  }
}

// -- rendering ---------------------------------------------------------------------------------

function cancelText(s) {
  const c = s.cancel;
  if (!c) return "";
  if (s.status === "cancelled") {
    return ["cancelled", c.origin || "", c.at ? `at ${fmtTime(c.at)}` : ""].filter(Boolean).join(" ");
  }
  return `cancel requested ${c.origin || ""}`.trim();
}

function storedText(s) {
  const when = fmtTime(s.ended_at);
  if (s.status === "succeeded") return `stored result from ${when}`;
  return `stored outcome from ${when}`;
}

function steps(s) {
  const out = [];
  const hidden = s.phases_hidden || {};
  if (hidden.before) out.push(el("li", { "data-testid": "tether-step-more", text: `${hidden.before} more phases` }));
  for (const p of s.phases || []) {
    out.push(el("li", { "data-testid": "tether-step", "data-state": p.state, text: p.state === "done" ? `${p.name} ✓` : p.name }));
  }
  if (hidden.after) out.push(el("li", { "data-testid": "tether-step-more", text: `${hidden.after} more phases` }));
  return out;
}

function clock() {
  if (!state || state.elapsed === null || state.elapsed === undefined) return [state ? state.elapsed : null, null];
  const running = state.status === "running";
  const passed = running ? Math.max(0, Date.now() / 1000 - receivedAt) : 0;
  const eta = state.eta === null ? null : Math.max(0, state.eta - passed);
  return [state.elapsed + passed, eta];
}

function renderClock() {
  const [elapsed, eta] = clock();
  $("tether-elapsed").textContent = elapsed === null ? "" : `elapsed ${fmtDuration(elapsed)}`;
  $("tether-eta").textContent = eta === null ? "" : `ETA ${fmtDuration(eta)}${state.eta_scope === "run" ? "" : " (phase)"}`;
}

function renderRuns(box, table, runs) {
  const now = Date.now() / 1000;
  const rows = runs.map((r) => runRow(r, now));
  table.tBodies[0].replaceChildren(...rows);
  show(box, rows.length > 0);
}

function render() {
  const s = state;
  if (!s) return;
  document.title = `${s.pipeline} #${s.attempt} · ${s.status} · tether`;
  $("tether-pipeline").textContent = s.pipeline ?? "";
  $("tether-attempt").textContent = `#${s.attempt}${s.why ? ` (${s.why})` : ""}`;
  const badge = $("tether-status");
  badge.textContent = s.status;
  badge.dataset.status = s.status;
  $("tether-id").textContent = s.id;
  const params = $("tether-params");
  params.textContent = s.params || "";
  params.title = s.params_full || "";
  const damaged = $("tether-damaged");
  damaged.textContent = s.damaged && s.damaged.length ? `damaged row: ${s.damaged.join("; ")}` : "";
  show(damaged, Boolean(damaged.textContent));
  const waiting = $("tether-waiting");
  waiting.textContent = s.waiting || "";
  show(waiting, Boolean(s.waiting));
  const cancel = $("tether-cancel-origin");
  cancel.textContent = cancelText(s);
  show(cancel, Boolean(cancel.textContent));
  const stored = $("tether-stored");
  stored.textContent = s.stored ? storedText(s) : "";
  show(stored, Boolean(s.stored));
  const newer = $("tether-newer");
  if (s.newer) {
    newer.textContent = `#${s.newer.attempt} (${s.newer.status})`;
    newer.href = `/runs/${encodeURIComponent(s.newer.id)}`;
  }
  show($("tether-newer-box"), Boolean(s.newer));
  $("tether-steps").replaceChildren(...steps(s));
  const bar = $("tether-progress");
  const pct = s.percent === null || s.percent === undefined ? 0 : s.percent;
  $("tether-bar-fill").style.width = `${pct}%`;
  bar.setAttribute("aria-valuenow", String(Math.round(pct)));
  $("tether-phase").textContent = s.phase || "-";
  $("tether-counts").textContent = progressText(s);
  $("tether-rate").textContent = s.rate ? `${s.rate.toFixed(s.rate < 10 ? 2 : 0)}/s` : "";
  renderClock();
  $("tether-message").textContent = s.message || "";
  const error = $("tether-error");
  if (s.error) {
    $("tether-error-message").textContent = `${s.error.type}: ${s.error.message}`;
    $("tether-traceback").textContent = s.error.traceback || "";
  }
  show(error, Boolean(s.error));
  $("tether-result-text").textContent = s.result ?? "";
  show($("tether-result"), s.result !== null && s.result !== undefined);
  const actions = s.actions || {};
  show($("tether-cancel"), Boolean(actions.cancel));
  show($("tether-rerun"), Boolean(actions.rerun));
  show($("tether-resume"), Boolean(actions.resume));
  const log = $("tether-log");
  const following = log.scrollTop + log.clientHeight >= log.scrollHeight - 4; // at the bottom: stay there
  log.textContent = lines.join("\n");
  if (following) log.scrollTop = log.scrollHeight;
  $("tether-log-count").textContent = lines.length ? `(${lines.length} lines)` : "";
  renderRuns($("tether-children-box"), $("tether-children"), s.children || []);
  const attempts = s.attempts || [];
  renderRuns($("tether-attempts-box"), $("tether-attempts"), attempts.length > 1 ? attempts : []);
}

for (const action of ["cancel", "rerun", "resume"]) {
  $(`tether-${action}`).addEventListener("click", () => act(action));
}
setInterval(() => { if (state && !ended()) renderClock(); }, 1000);
if (typeof EventSource === "function") stream();
else poll();
