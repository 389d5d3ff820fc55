// tether dashboard table (anywidget ESM): recent runs, a status filter, row selection.
// Run text is set with textContent only. Each dashboard() call is its own widget and filter.

const STATUSES = ["pending", "running", "succeeded", "failed", "cancelled", "interrupted"];
const COLUMNS = [["run", "run"], ["status", "status"], ["phase", "phase"], ["progress", "progress"],
  ["started", "started"], ["duration", "duration"]];

// h, fmtNum, fmtDuration, fmtClock, kernelOf, patchSavedOutputs: common.js

function render({ model, el }) {
  let receivedAt = performance.now();
  let disconnected = false, wasConnected = false, cleaned = false;
  const filter = h("select", { "data-testid": "tether-dashboard-filter", "aria-label": "filter by status" },
    h("option", { value: "" }, "all statuses"), ...STATUSES.map((s) => h("option", { value: s }, s)));
  const db = h("span", { class: "tether-dash-db" });
  const head = h("div", { class: "tether-dash-head" },
    h("span", { class: "tether-dash-title" }, "tether runs"), filter, db);
  const tbody = h("tbody");
  const table = h("table", { "data-testid": "tether-dashboard-table" },
    h("thead", {}, h("tr", {}, ...COLUMNS.map(([c, label]) => h("th", { scope: "col", class: `tether-col-${c}` }, label)))), tbody);
  const empty = h("div", { class: "tether-dash-empty", "data-testid": "tether-dashboard-empty" }, "no runs");
  const error = h("div", { class: "tether-dash-error", role: "alert", "data-testid": "tether-dashboard-error" });
  const disc = h("div", { class: "tether-note tether-disconnected", "data-testid": "tether-disconnected", hidden: true },
    "Disconnected from the kernel: these rows are the last ones received; re-run the cell to reattach.");
  const root = h("div", { class: "tether-dashboard", "data-testid": "tether-dashboard" }, head, disc, table, empty, error);
  el.append(root);

  function choose(id) {
    if (disconnected) return;
    model.set("selected", model.get("selected") === id ? "" : id);
    model.save_changes();
  }

  function durationOf(r) {
    if (r.elapsed === null || r.elapsed === undefined) return null;
    return r.elapsed + (r.status === "running" && !disconnected ? (performance.now() - receivedAt) / 1000 : 0);
  }

  function row(r, selected) {
    const tr = h("tr", {
      "data-testid": "tether-dashboard-row", "data-run-id": r.id, "data-status": r.status,
      tabindex: "0", "aria-selected": String(selected),
    });
    const bar = h("span", { class: "tether-minibar" }, h("span", {}));
    bar.firstChild.style.width = r.percent === null || r.percent === undefined ? "0" : `${r.percent}%`;
    const progress = r.total ? `${fmtNum(r.done)}/${fmtNum(r.total)}` : (r.done ? fmtNum(r.done) : "");
    const name = h("td", { class: "tether-col-run tether-wrap", title: `run id ${r.id}` },
      `${r.pipeline} #${r.attempt}`);
    if (r.params) name.append(h("span", { class: "tether-row-params", "data-testid": "tether-dashboard-params" }, r.params));
    const status = h("td", { class: "tether-col-status", "data-testid": "tether-dashboard-status" },
      h("span", { class: "tether-badge", "data-status": r.status }, r.status));
    const bad = r.damaged || [];
    if (bad.length) {  // a row edited behind tether's back
      tr.dataset.damaged = "";
      if (r.status !== "damaged") status.append(" ", h("span", { class: "tether-damaged", title: bad.join("; ") }, "damaged"));
      status.title = `damaged row: ${bad.join("; ")}`;
    }
    const duration = h("td", { class: "tether-col-duration", "data-duration": "" }, fmtDuration(durationOf(r)));
    tr.append(name, status, h("td", { class: "tether-col-phase tether-wrap" }, r.phase || ""),
      h("td", { class: "tether-col-progress" }, bar, progress),
      h("td", { class: "tether-col-started" }, fmtClock(r.started_at ?? r.created_at)), duration);
    tr.addEventListener("click", () => choose(r.id));
    tr.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); choose(r.id); }
    });
    return tr;
  }

  function update() {
    if (cleaned) return;
    const rows = model.get("rows") || [];
    const sel = model.get("selected") || "";
    const focusedId = document.activeElement?.dataset
      ? document.activeElement.dataset.runId : undefined;
    tbody.replaceChildren(...rows.map((r) => row(r, r.id === sel)));
    if (focusedId) tbody.querySelector(`tr[data-run-id="${CSS.escape(focusedId)}"]`)?.focus();
    filter.value = model.get("status_filter") || "";
    filter.disabled = disconnected;
    db.textContent = model.get("db") || "";
    empty.hidden = rows.length > 0;
    table.hidden = rows.length === 0;
    const err = model.get("error") || "";
    error.textContent = err;
    error.hidden = !err;
    disc.hidden = !disconnected;
    root.dataset.filter = filter.value;
    root.dataset.mode = disconnected ? "disconnected" : "live";
  }

  function checkKernel() {
    if (disconnected) return;
    let gone = el.classList.contains("jupyter-widgets-disconnected");
    const k = kernelOf(model);
    if (k !== null) {  // null: the front end does not say
      gone = gone || !k || k.isDisposed || k.status === "dead" || k.status === "restarting"
        || k.status === "autorestarting";
    }
    if (gone) { disconnected = true; update(); }
  }

  function tick() {
    if (cleaned) return;
    if (root.isConnected) wasConnected = true;
    else if (wasConnected) { cleanup(); return; }
    checkKernel();
    const rows = model.get("rows") || [];
    tbody.querySelectorAll("tr").forEach((tr, i) => {
      const r = rows[i];
      if (r && r.status === "running") tr.querySelector("[data-duration]").textContent = fmtDuration(durationOf(r));
    });
  }

  const onFilter = () => { model.set("status_filter", filter.value); model.save_changes(); };
  filter.addEventListener("change", onFilter);
  const onRows = () => { receivedAt = performance.now(); update(); };
  const onFallback = () => setTimeout(() => patchSavedOutputs(model, model.get("fallback")), 0);
  const onCommLive = () => setTimeout(checkKernel, 0);
  model.on("change:rows", onRows);
  model.on("change:selected", update);
  model.on("change:status_filter", update);
  model.on("change:error", update);
  model.on("change:fallback", onFallback);
  model.on("comm_live_update", onCommLive);
  const timer = setInterval(tick, 1000);
  checkKernel();
  update();
  onFallback();

  function cleanup() {
    if (cleaned) return;
    cleaned = true;
    clearInterval(timer);
    filter.removeEventListener("change", onFilter);
    model.off("change:rows", onRows);
    model.off("change:selected", update);
    model.off("change:status_filter", update);
    model.off("change:error", update);
    model.off("change:fallback", onFallback);
    model.off("comm_live_update", onCommLive);
    root.remove();
  }
  return cleanup;
}

export default { render };
