// tether run panel (anywidget ESM). Renders only from the `snapshot` trait (the full run state).
// Run text (names, logs, errors, results) is set with textContent, never parsed as HTML.
//
// The panel never shows more than it knows:
// - disconnected: when the kernel behind it is gone (restarted, shut down, dead, or the view was
//   rebuilt from saved widget state), root data-mode="disconnected", the clock stops, the status
//   reads as last known ("was running at 17:43") and the buttons are disabled with the reason.
//   Signals: ipywidgets' comm_live (JupyterLab / Notebook 7 set it false on a restart; it is false
//   for a model restored from the notebook), the model's comm:close, and the widget manager's
//   kernel (gone, replaced, dead, restarting);
// - it shows the attempt it was given; a newer attempt is a link (data-testid=tether-newer);
// - a stored outcome (start() found the run ended) says so, with its age;
// - when the run ends it keeps the notebook's saved copy of its output current (fallback).

const ACTIVE = new Set(["pending", "running"]);
const REPLY_TIMEOUT_MS = 10000;
const LOG_SHORT = 5;
const GUARD_MS = 1500;  // after a run ends, Re-run/Resume stay disabled this long (a late click on Cancel)
const PING_MS = 3000;  // an ended run's panel asks the kernel this often for a newer attempt
const DISCONNECTED_FIX = "re-run the cell to reattach";
// an active run's kernel sends its snapshot at least every 5 s (panel.py BEAT_S, at the
// poller's pace): this long without a word, the panel says it does not know (a front end that
// gives no signal when its kernel dies, or a kernel held by a C call)
const QUIET_MS = 15000;

// h, fmtNum, fmtDuration, fmtClock, fmtAge, kernelOf, patchSavedOutputs: common.js

function fmtRate(r) {
  if (r === null || r === undefined) return "";
  if (r >= 100) return `${Math.round(r).toLocaleString()}/s`;
  if (r >= 1) return `${r.toFixed(1)}/s`;
  return `${(1 / r).toFixed(1)} s/item`;
}

function storedText(s, when) {
  if (s.status === "succeeded") {
    return `stored result from ${when}, not computed now · to compute again: Re-run, or start(..., policy="rerun")`;
  }
  if (s.actions?.resume) {
    return `stored outcome from ${when}, not run now · to try again: Re-run or Resume, or start(..., policy="rerun" or "resume")`;
  }
  return `stored outcome from ${when}, not run now · to try again: Re-run`;
}

// What retries, timeouts, the queue and nesting add to the panel (snapshot.py control_notes
// says the same for the static renderings). dt: seconds since the kernel made the snapshot, so a
// countdown goes on between snapshots; it stops at 1 s: the kernel says when the try started.
export function triesText(s, dt = 0) {
  const tries = s.tries || 0;
  const most = s.max_tries || 1;
  if (s.retry_at !== null && s.retry_at !== undefined) {
    const wait = Math.max(1, Math.ceil(s.retry_at - s.now - dt));
    return `try ${tries + 1} of ${most} — next in ${wait} s`;
  }
  if (most <= 1 && tries <= 1) return "";
  if (s.status === "running") return `try ${tries} of ${most}`;
  if (s.status === "failed" && tries >= most) return `failed after ${tries} tries`;
  if ((s.status === "succeeded" || s.status === "failed") && tries) return `${s.status} on try ${tries} of ${most}`;
  return "";
}

export function overdueText(s, dt = 0) {
  if (s.overdue === null || s.overdue === undefined) return "";
  return `past its timeout by ${Math.floor(s.overdue + dt)} s (timeout ${s.timeout} s per try): ` +
    "it stops at its next ctx call";
}

export function queuedText(s) {
  if (s.ahead === null || s.ahead === undefined) return "";
  return `queued — ${s.ahead} ahead${s.concurrency ? ` (concurrency=${s.concurrency})` : ""}`;
}

export function parentText(p) {
  if (!p) return "";
  const attempt = p.attempt === null || p.attempt === undefined ? "" : ` #${p.attempt}`;
  return `started by ${p.pipeline}${attempt} (id ${p.id})`;
}

export function childrenText(s) {
  const kids = s.children || [];
  if (!kids.length) return "";
  const counts = Object.entries(s.children_count || {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([status, n]) => `${n} ${status}`).join(", ");
  return `children: ${kids.length + (s.children_hidden || 0)} (${counts})`;
}

function childProgress(k) {
  if (k.total) return `${fmtNum(k.done)}/${fmtNum(k.total)} (${Math.round(k.percent)}%)`;
  return k.done ? `${fmtNum(k.done)} done` : "";
}

function render({ model, el }) {
  const token = Math.random().toString(36).slice(2, 8);
  let nextId = 0;
  const pending = new Map();
  let logExpanded = false;
  let receivedAt = performance.now();
  let disconnected = null;  // {at: epoch s, why: text} once the kernel is gone
  let lost = false;  // the connection is down for now (it may come back)
  let quiet = false;  // an active run's kernel has sent nothing for QUIET_MS
  const kernel0 = kernelOf(model);
  let lastStatus = null;
  let guardUntil = 0;
  let confirming = false;
  let pingBusy = false, pingEvery = PING_MS, nextPing = performance.now() + PING_MS;
  let wasConnected = false, cleaned = false, ticks = 0;
  let sawLive = false;  // this view saw its kernel alive (else: restored from a saved notebook)

  // ---- skeleton (built once; updates only change text, attributes and visibility)
  const name = h("span", { class: "tether-name", "data-testid": "tether-pipeline" });
  const attempt = h("span", { class: "tether-attempt", "data-testid": "tether-attempt" });
  const badge = h("span", { class: "tether-badge", "data-testid": "tether-status" });
  const runId = h("span", { class: "tether-id", "data-testid": "tether-id" });
  const modeTag = h("span", { class: "tether-mode", "data-testid": "tether-mode" });
  const header = h("div", { class: "tether-header" }, name, attempt, badge, runId, modeTag);
  const params = h("div", { class: "tether-params", "data-testid": "tether-params" });

  const discNote = h("div", { class: "tether-note tether-disconnected", "data-testid": "tether-disconnected", role: "status", hidden: true });
  const waiting = h("div", { class: "tether-note", "data-testid": "tether-waiting", hidden: true });
  const queued = h("div", { class: "tether-note", "data-testid": "tether-queued", hidden: true });
  const triesNote = h("div", { class: "tether-note tether-tries", "data-testid": "tether-tries", hidden: true });
  const tryErrors = h("ul", { class: "tether-try-errors", "data-testid": "tether-try-errors", hidden: true });
  const overdue = h("div", { class: "tether-note tether-overdue", "data-testid": "tether-overdue", role: "status", hidden: true });
  const parentNote = h("div", { class: "tether-note", "data-testid": "tether-parent", hidden: true });
  const storedNote = h("div", { class: "tether-note", "data-testid": "tether-stored", hidden: true });
  const cancelNote = h("div", { class: "tether-note", "data-testid": "tether-cancel-origin", hidden: true });
  const newerBtn = h("button", { type: "button", class: "tether-link", "data-testid": "tether-newer" });
  const newerNote = h("div", { class: "tether-note", hidden: true }, newerBtn);

  const steps = h("ol", { class: "tether-steps", "data-testid": "tether-steps", "aria-label": "phases" });
  const damaged = h("div", { class: "tether-damaged", "data-testid": "tether-damaged", role: "alert", hidden: true });

  const fill = h("div", { class: "tether-bar-fill" });
  const bar = h("div", {
    class: "tether-bar", role: "progressbar", "data-testid": "tether-progress",
    "aria-valuemin": "0", "aria-label": "progress of the current phase",
  }, fill);
  const phaseLabel = h("span", { class: "tether-phase", "data-testid": "tether-phase" });
  const counts = h("span", { class: "tether-counts", "data-testid": "tether-counts" });
  const rate = h("span", { class: "tether-rate", "data-testid": "tether-rate" });
  const elapsed = h("span", { class: "tether-elapsed", "data-testid": "tether-elapsed", title: "time since the run started" });
  const eta = h("span", { class: "tether-eta", "data-testid": "tether-eta" });
  const stats = h("div", { class: "tether-stats" }, phaseLabel, counts, rate, elapsed, eta);

  const message = h("div", { class: "tether-message", "data-testid": "tether-message" });

  const kidsHead = h("div", { class: "tether-children-head", "data-testid": "tether-children-summary" });
  const kidsList = h("ul", { class: "tether-children", "data-testid": "tether-children", "aria-label": "child runs" });
  const kidsBox = h("div", { class: "tether-children-box", hidden: true }, kidsHead, kidsList);

  const logPre = h("pre", { class: "tether-log", "data-testid": "tether-log" });
  const logToggle = h("button", { type: "button", class: "tether-link", "data-testid": "tether-log-toggle" });
  const logBox = h("div", { class: "tether-logbox" }, logPre, logToggle);

  const errHead = h("div", { class: "tether-error-head", "data-testid": "tether-error-message" });
  const tbPre = h("pre", { class: "tether-traceback", "data-testid": "tether-traceback" });
  const tbDetails = h("details", { class: "tether-tb" }, h("summary", {}, "Traceback"), tbPre);
  const errorBox = h("div", { class: "tether-error", "data-testid": "tether-error", role: "alert" }, errHead, tbDetails);

  const resultCode = h("code", { "data-testid": "tether-result-text" });
  const resultBox = h("div", { class: "tether-result", "data-testid": "tether-result" }, "Result: ", resultCode);

  const notice = h("div", { class: "tether-notice", "data-testid": "tether-notice", role: "status" });

  // Re-run / Resume sit at the left, Cancel at the right: the button that replaces Cancel when a
  // run ends is never under the pointer that was on Cancel.
  const btnRerun = h("button", { type: "button", class: "tether-btn", "data-testid": "tether-rerun" }, "Re-run");
  const btnResume = h("button", { type: "button", class: "tether-btn", "data-testid": "tether-resume" }, "Resume");
  const btnCancel = h("button", { type: "button", class: "tether-btn tether-btn-cancel", "data-testid": "tether-cancel" }, "Cancel");
  const confirmText = h("span", { class: "tether-confirm-text" });
  const btnConfirm = h("button", { type: "button", class: "tether-btn", "data-testid": "tether-rerun-confirm" }, "Re-run from scratch");
  const btnKeep = h("button", { type: "button", class: "tether-btn", "data-testid": "tether-rerun-keep" }, "Keep it");
  const confirmBox = h("div", { class: "tether-confirm", "data-testid": "tether-confirm", role: "group", hidden: true },
    confirmText, btnConfirm, btnKeep);
  const buttons = h("div", { class: "tether-actions" }, btnRerun, btnResume, btnCancel);

  const root = h("div", { class: "tether-panel", "data-testid": "tether-panel" },
    header, params, discNote, damaged, waiting, queued, triesNote, tryErrors, overdue, parentNote,
    cancelNote, storedNote, newerNote, steps, h("div", { class: "tether-progress" }, bar, stats),
    kidsBox, message, logBox, errorBox, resultBox,
    notice, confirmBox, buttons);
  el.append(root);

  // ---- requests: {id, action} -> reply {id, ok, error}
  function request(action) {
    const id = `${token}-${++nextId}`;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        pending.delete(id);
        resolve({ id, ok: false, timeout: true, error: `${action}: no reply from the kernel after ` +
          `${REPLY_TIMEOUT_MS / 1000} s. It handles buttons between cells, so it may be busy ` +
          "running one (interrupt it to stop a run a cell is waiting for), or it was restarted " +
          `(${DISCONNECTED_FIX}).` });
      }, REPLY_TIMEOUT_MS);
      pending.set(id, { resolve, timer });
      try {
        model.send({ id, action });
      } catch (err) {
        clearTimeout(timer);
        pending.delete(id);
        goneNow(`could not reach the kernel (${err?.message ? err.message : err})`);
        resolve({ id, ok: false, error: `could not reach the kernel: ${err}; ${DISCONNECTED_FIX}` });
      }
    });
  }

  function onCustom(msg) {
    if (!msg || typeof msg !== "object" || !pending.has(msg.id)) return;
    const { resolve, timer } = pending.get(msg.id);
    clearTimeout(timer);
    pending.delete(msg.id);
    resolve(msg);
  }

  function showNotice(level, text) {
    notice.textContent = text || "";
    notice.dataset.level = level || "";
    notice.hidden = !text;
    notice.setAttribute("role", level === "error" ? "alert" : "status");
  }

  async function act(button, action) {
    if (disconnected) return;
    button.disabled = true;
    root.dataset.busy = action;
    const reply = await request(action);
    delete root.dataset.busy;
    button.disabled = false;
    if (!reply.ok) showNotice("error", reply.error || `${action} failed`);
    update();
  }
  const onCancel = () => act(btnCancel, "cancel");
  const onRerun = () => {
    const s = model.get("snapshot") || {};
    if (s.confirm_rerun && !confirming) {  // a long run: ask once
      confirming = true;
      confirmText.textContent = `This run took ${fmtDuration(s.elapsed)}. Start it again from scratch?`;
      update();
      btnConfirm.focus();
      return;
    }
    act(btnRerun, "rerun");
  };
  const onConfirm = () => { confirming = false; update(); act(btnConfirm, "rerun"); };
  const onKeep = () => { confirming = false; update(); };
  const onResume = () => act(btnResume, "resume");
  const onNewer = () => act(newerBtn, "newer");
  btnCancel.addEventListener("click", onCancel);
  btnRerun.addEventListener("click", onRerun);
  btnConfirm.addEventListener("click", onConfirm);
  btnKeep.addEventListener("click", onKeep);
  btnResume.addEventListener("click", onResume);
  newerBtn.addEventListener("click", onNewer);
  const onToggle = () => { logExpanded = !logExpanded; update(); };
  logToggle.addEventListener("click", onToggle);

  // ---- is the kernel still there?
  function goneNow(why) {
    if (disconnected) return;
    // the state shown was true until the kernel went away, or (a view that never saw its kernel)
    // when the kernel built it
    const s = model.get("snapshot") || {};
    const at = Date.now() / 1000;
    disconnected = { at, why, clock: performance.now(), known: sawLive ? at : (s.now || at) };
    for (const { resolve, timer } of pending.values()) {
      clearTimeout(timer);
      resolve({ ok: false, error: `the kernel is gone; ${DISCONNECTED_FIX}` });
    }
    pending.clear();
    update();
  }

  function checkKernel() {
    if (disconnected) return;
    if (el.classList.contains("jupyter-widgets-disconnected")) {
      goneNow(sawLive ? "the kernel was restarted"
        : "this view was restored from the saved notebook, without the kernel that drove it");
      return;
    }
    if (kernel0 === null) { sawLive = true; return; }  // the front end does not say more
    const k = kernelOf(model);
    if (kernel0 === undefined) {  // restored from a saved notebook, no kernel yet
      if (!k) goneNow("no kernel is running this panel");
      return;
    }
    if (!k || k !== kernel0 || k.isDisposed) { goneNow("the kernel was shut down or changed"); return; }
    if (k.status === "dead") { goneNow("the kernel died"); return; }
    if (k.status === "restarting" || k.status === "autorestarting") { goneNow("the kernel was restarted"); return; }
    const down = k.connectionStatus !== undefined && k.connectionStatus !== "connected";
    if (down !== lost) { lost = down; update(); }
    sawLive = true;
  }
  const onCommLive = () => setTimeout(checkKernel, 0);
  const onCommClose = () => goneNow("the kernel closed this panel");

  // ---- rendering
  function tick() {
    if (cleaned) return;
    root.dataset.ticks = String(++ticks);  // the clock's beats (tests wait on them, not on sleeps)
    if (root.isConnected) wasConnected = true;
    else if (wasConnected) { cleanup(); return; }  // an output re-rendered without removing this view
    checkKernel();
    const s = model.get("snapshot") || {};
    const active = ACTIVE.has(s.status);
    const nowClock = disconnected ? disconnected.clock : performance.now();
    const quietNow = !disconnected && ACTIVE.has(s.status) && s.mode !== "static"
      && nowClock - receivedAt > QUIET_MS;
    if (quietNow !== quiet) { quiet = quietNow; update(); return; }
    if (quiet) modeTag.textContent = `no word from the kernel for ${fmtDuration((nowClock - receivedAt) / 1000)}`;
    const dt = active ? (nowClock - receivedAt) / 1000 : 0;
    const el_ = s.elapsed === null || s.elapsed === undefined ? null : s.elapsed + (s.status === "running" ? dt : 0);
    elapsed.textContent = el_ === null ? "" : `run time ${fmtDuration(el_)}`;
    if (s.eta !== null && s.eta !== undefined && s.status === "running" && !disconnected && !lost && !quiet) {
      // never 0:00 before the end: a countdown that ran out waits for the kernel's next estimate
      const scope = s.eta_scope === "run" ? "run" : "phase";
      eta.textContent = `${scope} ETA ${fmtDuration(Math.max(1, s.eta - dt), true)}`;
      eta.title = scope === "run" ? "time left in the run (this is its last phase)"
        : "time left in the current phase (later phases not counted)";
    } else {
      eta.textContent = "";
    }
    // the wait before a retry and the time past a timeout go on between snapshots (frozen when
    // the kernel is gone: dt stops with the clock)
    triesNote.textContent = triesText(s, dt);
    triesNote.hidden = !triesNote.textContent;
    overdue.textContent = overdueText(s, dt);
    overdue.hidden = !overdue.textContent;
    if (s.stored && s.ended_at) {
      storedNote.textContent = storedText(s, `${fmtClock(s.ended_at)} (${fmtAge(Date.now() / 1000 - s.ended_at)} ago)`);
    }
    if (performance.now() >= nextPing) pingNewer(s);
  }

  function pingNewer(s) {
    nextPing = performance.now() + pingEvery;
    if (pingBusy || disconnected || lost || ACTIVE.has(s.status) || !s.id) return;
    if (!root.isConnected || document.visibilityState === "hidden") return;
    pingBusy = true;
    request("refresh").then((reply) => {
      pingBusy = false;
      pingEvery = reply.timeout ? Math.min(pingEvery * 2, 60000) : PING_MS;
    });
  }

  function update() {
    if (cleaned) return;
    const s = model.get("snapshot") || {};
    if (!s.id) { root.dataset.status = "unknown"; return; }
    const active = ACTIVE.has(s.status);
    if (lastStatus !== null && ACTIVE.has(lastStatus) && !active) guardUntil = performance.now() + GUARD_MS;
    if (s.id !== root.dataset.runId) confirming = false;
    lastStatus = s.status;
    root.dataset.runId = s.id;
    root.dataset.status = s.status;
    root.dataset.mode = disconnected ? "disconnected" : s.mode;
    root.dataset.attempt = String(s.attempt);
    root.dataset.phase = s.phase || "";
    root.setAttribute("aria-label", `run ${s.pipeline} attempt ${s.attempt}: ${s.status}` +
      (disconnected ? " (disconnected)" : ""));

    name.textContent = s.pipeline;
    attempt.textContent = s.why ? `#${s.attempt} · ${s.why}` : `#${s.attempt}`;
    attempt.title = `attempt ${s.attempt} of key ${s.key}`;
    runId.textContent = `id ${s.id}`;
    runId.title = `run id ${s.id} · key ${s.key}`;
    const statusText = s.status;
    badge.textContent = disconnected && active ? `was ${statusText} at ${fmtClock(disconnected.known, false)}` : statusText;
    badge.dataset.status = s.status;
    modeTag.textContent = disconnected ? "disconnected" : lost ? "reconnecting…"
      : quiet ? "no word from the kernel"
      : s.mode === "stream" ? "live" : s.mode === "poll" ? "polling" : "";
    root.dataset.quiet = quiet ? "true" : "false";
    modeTag.title = disconnected ? disconnected.why : lost ? "the connection to the kernel is down for now"
      : quiet ? "the kernel is busy (a cell holds it) or gone; if gone, re-run the cell to reattach"
      : s.mode === "stream" ? "this kernel runs it; updates are pushed"
      : s.mode === "poll" ? "another process runs it; read from the store every second" : "";
    params.textContent = s.params || "";
    params.title = s.params_full || "";
    params.hidden = !s.params;

    discNote.hidden = !disconnected;
    if (disconnected) {
      discNote.textContent = sawLive
        ? `Disconnected at ${fmtClock(disconnected.at)}: ${disconnected.why}. ` +
          `This panel shows the last state it received; ${DISCONNECTED_FIX}.`
        : `Disconnected: ${disconnected.why}. It shows the state of ${fmtClock(disconnected.known)}; ` +
          `${DISCONNECTED_FIX}.`;
    }

    // a row edited behind tether's back: which columns are damaged
    const bad = s.damaged || [];
    const badText = bad.length ? `damaged row: ${bad.join("; ")}` : "";
    if (damaged.textContent !== badText) damaged.textContent = badText;  // an alert: said once
    damaged.hidden = bad.length === 0;

    waiting.textContent = s.waiting || "";
    waiting.hidden = !s.waiting;
    queued.textContent = queuedText(s);
    queued.hidden = !queued.textContent;
    parentNote.textContent = parentText(s.parent);
    parentNote.hidden = !s.parent;
    parentNote.title = s.parent ? `this run was started by the body of run ${s.parent.id}` : "";
    const errs = s.try_errors || [];
    const errLines = [
      ...(s.try_errors_hidden ? [`${s.try_errors_hidden} earlier tries failed too`] : []),
      ...errs.map((e) => `try ${e.try}: ${e.type}: ${e.message}`),
    ];
    while (tryErrors.children.length > errLines.length) tryErrors.lastChild.remove();
    errLines.forEach((text, i) => {
      const li = tryErrors.children[i] || tryErrors.appendChild(h("li", { "data-testid": "tether-try-error" }));
      li.textContent = text;
    });
    tryErrors.hidden = errLines.length === 0;

    // children: reuse <li>s so a re-render does not flicker
    const kids = s.children || [];
    kidsHead.textContent = childrenText(s) +
      (s.children_hidden ? ` · the latest ${kids.length} shown` : "");
    while (kidsList.children.length > kids.length) kidsList.lastChild.remove();
    kids.forEach((k, i) => {
      let li = kidsList.children[i];
      if (!li) {
        li = h("li", { class: "tether-child", "data-testid": "tether-child" },
          h("span", { class: "tether-child-name" }),
          h("span", { class: "tether-child-params" }),
          h("span", { class: "tether-badge" }),
          h("span", { class: "tether-minibar" }, h("span", {})),
          h("span", { class: "tether-child-progress" }));
        kidsList.append(li);
      }
      const [nm, pa, bd, mb, pr] = li.children;
      li.dataset.runId = k.id;
      li.dataset.status = k.status;
      nm.textContent = `${k.pipeline} #${k.attempt}`;
      nm.title = `run id ${k.id}${k.phase ? ` · phase ${k.phase}` : ""}`;
      pa.textContent = k.params || "";
      bd.textContent = k.status;
      bd.dataset.status = k.status;
      mb.firstChild.style.width = k.percent === null || k.percent === undefined ? "0" : `${k.percent}%`;
      pr.textContent = childProgress(k) + (k.max_tries > 1 && k.tries > 1 ? ` · try ${k.tries} of ${k.max_tries}` : "");
    });
    kidsBox.hidden = kids.length === 0;
    const c = s.cancel;
    cancelNote.hidden = !c;
    if (c) {
      const at = c.at ? ` at ${fmtClock(c.at)}` : "";
      cancelNote.textContent = s.status === "cancelled" ? `cancelled ${c.origin || ""}${at}`.replace("  ", " ")
        : `cancel requested ${c.origin || ""}${at}; the run stops at its next progress call`.replace("  ", " ");
    }
    storedNote.hidden = !(s.stored && s.ended_at);
    const nw = s.newer;
    newerNote.hidden = !nw;
    if (nw) {
      newerBtn.textContent = `A newer attempt exists: #${nw.attempt} (${nw.status}). Show it here`;
      newerBtn.title = `run id ${nw.id}; this panel shows attempt #${s.attempt} until you ask`;
      newerBtn.disabled = !!disconnected;
    }

    // stepper: reuse <li>s so a re-render does not flicker. A run with many phases sends only
    // those around the current one, and how many it left out before and after them.
    const hidden = s.phases_hidden || {};
    const more = (n, where) => ({ name: `${fmtNum(n)} more`, state: "more", where });
    const phases = [
      ...(hidden.before ? [more(hidden.before, "before")] : []),
      ...(s.phases || []),
      ...(hidden.after ? [more(hidden.after, "after")] : []),
    ];
    while (steps.children.length > phases.length) steps.lastChild.remove();
    phases.forEach((p, i) => {
      let li = steps.children[i];
      if (!li) { li = h("li", { class: "tether-step" }); steps.append(li); }
      li.textContent = p.name;
      li.dataset.state = p.state;
      li.dataset.testid = p.state === "more" ? "tether-step-more" : "tether-step";
      li.title = p.state === "more" ? `phases not shown (${p.where} these)` : `${p.name}: ${p.state}`;
      if (p.state === "current") li.setAttribute("aria-current", "step"); else li.removeAttribute("aria-current");
    });
    steps.hidden = phases.length === 0;

    // bar
    const determinate = s.total !== null && s.total !== undefined && s.total > 0;
    bar.classList.toggle("tether-indeterminate", !determinate && s.status === "running" && !disconnected);
    if (determinate) {
      bar.setAttribute("aria-valuemax", String(s.total));
      bar.setAttribute("aria-valuenow", String(Math.min(s.done, s.total)));
      bar.setAttribute("aria-valuetext", `${Math.floor(s.percent)}% (${fmtNum(s.done)} of ${fmtNum(s.total)})`);
    } else if (s.percent !== null && s.percent !== undefined) {  // ended without a total
      bar.setAttribute("aria-valuemax", "100");
      bar.setAttribute("aria-valuenow", String(Math.round(s.percent)));
      bar.setAttribute("aria-valuetext", s.done ? `${fmtNum(s.done)} done` : "done");
    } else {  // indeterminate: no aria-valuenow (ARIA)
      bar.setAttribute("aria-valuemax", "100");
      bar.removeAttribute("aria-valuenow");
      bar.setAttribute("aria-valuetext", s.done ? `${fmtNum(s.done)} done, total unknown` : "total unknown");
    }
    fill.style.width = s.percent === null || s.percent === undefined ? "" : `${s.percent}%`;
    phaseLabel.textContent = s.phase || (s.status === "pending" && !s.waiting ? "waiting to start" : "");
    // a phase without a total shows what was counted, nothing when nothing was
    counts.textContent = determinate
      ? `${fmtNum(s.done)} / ${fmtNum(s.total)} · ${Math.floor(s.percent)}%`
      : (s.done ? `${fmtNum(s.done)} done` : "");
    rate.textContent = s.status === "running" && !disconnected && !quiet ? fmtRate(s.rate) : "";
    rate.title = "from the last 30 s of progress (items reused from checkpoints not counted)";

    // log tail; the last message is shown on its own unless it is the log's last line
    const lines = s.log || [];
    const shown = logExpanded ? lines : lines.slice(-LOG_SHORT);
    logPre.textContent = shown.join("\n");
    logBox.hidden = lines.length === 0;
    message.textContent = s.message || "";
    message.hidden = !s.message || (lines.length > 0 && lines[lines.length - 1] === s.message);
    logToggle.hidden = lines.length <= LOG_SHORT;
    logToggle.textContent = logExpanded ? "Show fewer lines"
      : `Show ${lines.length - LOG_SHORT} earlier line${lines.length - LOG_SHORT === 1 ? "" : "s"}`;
    logToggle.setAttribute("aria-expanded", String(logExpanded));

    // error (a cancel is no error: its origin is shown instead)
    const err = s.error;
    const showErr = !!err && s.status !== "succeeded" && s.status !== "cancelled";
    errorBox.hidden = !showErr;
    if (showErr) {
      errHead.textContent = `${err.type}: ${err.message}`;
      tbPre.textContent = err.traceback || "";
      tbDetails.hidden = !err.traceback;
    }

    // result
    resultBox.hidden = s.result === null || s.result === undefined;
    resultCode.textContent = s.result ?? "";

    // buttons
    const a = s.actions || {};
    const why = disconnected ? `the kernel is gone: ${DISCONNECTED_FIX}` : "";
    const guarded = performance.now() < guardUntil;
    btnCancel.hidden = !a.cancel;
    btnCancel.textContent = s.cancel_requested ? "Cancelling…" : "Cancel";
    btnCancel.disabled = !!disconnected || !!s.cancel_requested || root.dataset.busy === "cancel";
    btnRerun.hidden = !a.rerun || confirming;
    btnResume.hidden = !a.resume;
    for (const b of [btnRerun, btnResume]) {
      b.disabled = !!disconnected || guarded || !!root.dataset.busy;
      b.title = why || (guarded ? "the run just ended" : "");
    }
    btnCancel.title = why;
    confirmBox.hidden = !confirming || !a.rerun || !!disconnected;
    buttons.hidden = !a.cancel && !a.rerun && !a.resume;
    buttons.dataset.disabledReason = why;
    if (guarded) setTimeout(update, guardUntil - performance.now() + 20);

    const n = model.get("notice") || {};
    showNotice(n.level, n.text);
    tick();
  }

  const onSnapshot = () => {
    if (!disconnected) receivedAt = performance.now();
    update();
  };
  const onNotice = () => update();
  const onFallback = () => setTimeout(() => patchSavedOutputs(model, model.get("fallback")), 0);
  model.on("change:snapshot", onSnapshot);
  model.on("change:notice", onNotice);
  model.on("change:fallback", onFallback);
  model.on("msg:custom", onCustom);
  model.on("comm_live_update", onCommLive);
  model.on("comm:close", onCommClose);
  const timer = setInterval(tick, 1000);
  checkKernel();
  update();
  onFallback();  // a saved output older than the run's end (e.g. after a page reload)
  // a new view (page reload, re-display) asks for a fresh snapshot: clocks and rates are current
  if (!disconnected) request("refresh");

  function cleanup() {
    if (cleaned) return;
    cleaned = true;
    clearInterval(timer);
    for (const { timer: t } of pending.values()) clearTimeout(t);
    pending.clear();
    model.off("change:snapshot", onSnapshot);
    model.off("change:notice", onNotice);
    model.off("change:fallback", onFallback);
    model.off("msg:custom", onCustom);
    model.off("comm_live_update", onCommLive);
    model.off("comm:close", onCommClose);
    btnCancel.removeEventListener("click", onCancel);
    btnRerun.removeEventListener("click", onRerun);
    btnConfirm.removeEventListener("click", onConfirm);
    btnKeep.removeEventListener("click", onKeep);
    btnResume.removeEventListener("click", onResume);
    newerBtn.removeEventListener("click", onNewer);
    logToggle.removeEventListener("click", onToggle);
    root.remove();
  }
  return cleanup;
}

export default { render };
