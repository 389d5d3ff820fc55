// tether run panel (anywidget ESM). Renders only from the `snapshot` trait (the full run state).
// Run text (names, logs, errors, results) is set with textContent, never parsed as HTML.

const STATUS_TEXT = {
  pending: "pending", running: "running", succeeded: "succeeded", failed: "failed",
  cancelled: "cancelled", interrupted: "interrupted",
};
const ACTIVE = new Set(["pending", "running"]);
const REPLY_TIMEOUT_MS = 10000;
const LOG_SHORT = 5;

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

export function fmtNum(x) {
  if (x === null || x === undefined) return "?";
  if (!Number.isInteger(x)) return x.toLocaleString(undefined, { maximumFractionDigits: 2 });
  return x.toLocaleString();
}

export function fmtDuration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "-";
  s = Math.max(0, Math.floor(s));
  const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
  const two = (n) => String(n).padStart(2, "0");
  return hh ? `${hh}:${two(mm)}:${two(ss)}` : `${mm}:${two(ss)}`;
}

function fmtRate(r) {
  if (r === null || r === undefined) return "";
  if (r >= 100) return `${Math.round(r).toLocaleString()}/s`;
  if (r >= 1) return `${r.toFixed(1)}/s`;
  return `${(1 / r).toFixed(1)} s/item`;
}

function render({ model, el }) {
  const token = Math.random().toString(36).slice(2, 8);
  let nextId = 0;
  const pending = new Map();
  let logExpanded = false;
  let receivedAt = performance.now();

  // ---- skeleton (built once; updates only change text, attributes and visibility)
  const name = h("span", { class: "tether-name", "data-testid": "tether-pipeline" });
  const attempt = h("span", { class: "tether-attempt", "data-testid": "tether-attempt" });
  const key = h("code", { class: "tether-key", "data-testid": "tether-key" });
  const badge = h("span", { class: "tether-badge", "data-testid": "tether-status" });
  const modeTag = h("span", { class: "tether-mode", "data-testid": "tether-mode" });
  const header = h("div", { class: "tether-header" }, name, attempt, key, badge, modeTag);

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
  const elapsed = h("span", { class: "tether-elapsed", "data-testid": "tether-elapsed" });
  const eta = h("span", { class: "tether-eta", "data-testid": "tether-eta" });
  const stats = h("div", { class: "tether-stats" }, phaseLabel, counts, rate, elapsed, eta);

  const message = h("div", { class: "tether-message", "data-testid": "tether-message" });

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

  const btnCancel = h("button", { type: "button", class: "tether-btn", "data-testid": "tether-cancel" }, "Cancel");
  const btnRerun = h("button", { type: "button", class: "tether-btn", "data-testid": "tether-rerun" }, "Re-run");
  const btnResume = h("button", { type: "button", class: "tether-btn", "data-testid": "tether-resume" }, "Resume");
  const buttons = h("div", { class: "tether-actions" }, btnCancel, btnRerun, btnResume);

  const root = h("div", { class: "tether-panel", "data-testid": "tether-panel" },
    header, damaged, steps, h("div", { class: "tether-progress" }, bar, stats), message, logBox,
    errorBox, resultBox, notice, buttons);
  el.append(root);

  // ---- requests: {id, action} -> reply {id, ok, error}
  function request(action) {
    const id = `${token}-${++nextId}`;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        pending.delete(id);
        resolve({ id, ok: false, error: `${action}: no reply from the kernel after ` +
          `${REPLY_TIMEOUT_MS / 1000} s. It handles buttons between cells, so it may be busy ` +
          "running one (interrupt it to stop a run a cell is waiting for), or it was restarted " +
          "(re-execute the cell to reconnect)." });
      }, REPLY_TIMEOUT_MS);
      pending.set(id, { resolve, timer });
      try {
        model.send({ id, action });
      } catch (err) {
        clearTimeout(timer);
        pending.delete(id);
        resolve({ id, ok: false, error: `could not reach the kernel: ${err}` });
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
    button.disabled = true;
    root.dataset.busy = action;
    const reply = await request(action);
    delete root.dataset.busy;
    button.disabled = false;
    if (!reply.ok) showNotice("error", reply.error || `${action} failed`);
  }
  const onCancel = () => act(btnCancel, "cancel");
  const onRerun = () => act(btnRerun, "rerun");
  const onResume = () => act(btnResume, "resume");
  btnCancel.addEventListener("click", onCancel);
  btnRerun.addEventListener("click", onRerun);
  btnResume.addEventListener("click", onResume);
  const onToggle = () => { logExpanded = !logExpanded; update(); };
  logToggle.addEventListener("click", onToggle);

  // ---- rendering
  function tick() {
    const s = model.get("snapshot") || {};
    const active = ACTIVE.has(s.status);
    const dt = active ? (performance.now() - receivedAt) / 1000 : 0;
    const el_ = s.elapsed === null || s.elapsed === undefined ? null : s.elapsed + (s.status === "running" ? dt : 0);
    elapsed.textContent = el_ === null ? "" : `elapsed ${fmtDuration(el_)}`;
    if (s.eta !== null && s.eta !== undefined && active) {
      eta.textContent = `ETA ${fmtDuration(Math.max(0, s.eta - dt))}`;
    } else {
      eta.textContent = "";
    }
  }

  function update() {
    const s = model.get("snapshot") || {};
    if (!s.id) { root.dataset.status = "unknown"; return; }
    const active = ACTIVE.has(s.status);
    root.dataset.runId = s.id;
    root.dataset.status = s.status;
    root.dataset.mode = s.mode;
    root.dataset.attempt = String(s.attempt);
    root.dataset.phase = s.phase || "";
    root.setAttribute("aria-label", `run ${s.pipeline} attempt ${s.attempt}: ${s.status}`);

    name.textContent = s.pipeline;
    attempt.textContent = s.why ? `#${s.attempt} · ${s.why}` : `#${s.attempt}`;
    key.textContent = s.key_short;
    key.title = `key ${s.key} · run id ${s.id}`;
    badge.textContent = STATUS_TEXT[s.status] || s.status;
    badge.dataset.status = s.status;
    modeTag.textContent = s.mode === "stream" ? "live" : s.mode === "poll" ? "polling" : "";
    modeTag.title = s.mode === "stream" ? "this kernel runs it; updates are pushed"
      : s.mode === "poll" ? "another process runs it; read from the store every second" : "";

    // a row edited behind tether's back: which columns are damaged
    const bad = s.damaged || [];
    const badText = bad.length ? `damaged row: ${bad.join("; ")}` : "";
    if (damaged.textContent !== badText) damaged.textContent = badText;  // an alert: said once
    damaged.hidden = bad.length === 0;

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
    bar.classList.toggle("tether-indeterminate", !determinate && s.status === "running");
    if (determinate) {
      bar.setAttribute("aria-valuemax", String(s.total));
      bar.setAttribute("aria-valuenow", String(Math.min(s.done, s.total)));
      bar.setAttribute("aria-valuetext", `${Math.round(s.percent)}% (${fmtNum(s.done)} of ${fmtNum(s.total)})`);
    } else if (s.percent !== null && s.percent !== undefined) {  // ended without a total
      bar.setAttribute("aria-valuemax", "100");
      bar.setAttribute("aria-valuenow", String(Math.round(s.percent)));
      bar.setAttribute("aria-valuetext", `${fmtNum(s.done)} done`);
    } else {  // indeterminate: no aria-valuenow (ARIA)
      bar.setAttribute("aria-valuemax", "100");
      bar.removeAttribute("aria-valuenow");
      bar.setAttribute("aria-valuetext", `${fmtNum(s.done)} done, total unknown`);
    }
    fill.style.width = s.percent === null || s.percent === undefined ? "" : `${s.percent}%`;
    phaseLabel.textContent = s.phase || (s.status === "pending" ? "waiting to start" : "");
    counts.textContent = determinate
      ? `${fmtNum(s.done)} / ${fmtNum(s.total)} · ${Math.floor(s.percent)}%`
      : (s.done ? `${fmtNum(s.done)}` : "");
    rate.textContent = active ? fmtRate(s.rate) : "";

    // log tail; the last message is shown on its own unless it is the log's last line
    const lines = s.log || [];
    const shown = logExpanded ? lines : lines.slice(-LOG_SHORT);
    logPre.textContent = shown.join("\n");
    logBox.hidden = lines.length === 0;
    message.textContent = s.message || "";
    message.hidden = !s.message || (lines.length > 0 && lines[lines.length - 1] === s.message);
    logToggle.hidden = lines.length <= LOG_SHORT;
    logToggle.textContent = logExpanded ? "Show fewer lines" : `Show last ${lines.length} lines`;
    logToggle.setAttribute("aria-expanded", String(logExpanded));

    // error
    const err = s.error;
    const showErr = !!err && s.status !== "succeeded";
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
    btnCancel.hidden = !a.cancel;
    btnCancel.textContent = s.cancel_requested ? "Cancelling…" : "Cancel";
    btnCancel.disabled = !!s.cancel_requested || root.dataset.busy === "cancel";
    btnRerun.hidden = !a.rerun;
    btnResume.hidden = !a.resume;
    buttons.hidden = !a.cancel && !a.rerun && !a.resume;

    const n = model.get("notice") || {};
    showNotice(n.level, n.text);
    tick();
  }

  const onSnapshot = () => { receivedAt = performance.now(); update(); };
  const onNotice = () => update();
  model.on("change:snapshot", onSnapshot);
  model.on("change:notice", onNotice);
  model.on("msg:custom", onCustom);
  const timer = setInterval(tick, 1000);
  update();
  // a new view (page reload, re-display) asks for a fresh snapshot: clocks and rates are current
  request("refresh");

  return () => {
    clearInterval(timer);
    for (const { timer: t } of pending.values()) clearTimeout(t);
    pending.clear();
    model.off("change:snapshot", onSnapshot);
    model.off("change:notice", onNotice);
    model.off("msg:custom", onCustom);
    btnCancel.removeEventListener("click", onCancel);
    btnRerun.removeEventListener("click", onRerun);
    btnResume.removeEventListener("click", onResume);
    logToggle.removeEventListener("click", onToggle);
    root.remove();
  };
}

export default { render };
