// tether dashboard table (anywidget ESM): recent runs, a status filter, row selection.
// Run text is set with textContent only.

const STATUSES = ["pending", "running", "succeeded", "failed", "cancelled", "interrupted"];
const ACTIVE = new Set(["pending", "running"]);
const COLUMNS = ["pipeline", "status", "phase", "progress", "started", "duration"];

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function fmtDuration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "";
  s = Math.max(0, Math.floor(s));
  const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
  const two = (n) => String(n).padStart(2, "0");
  return hh ? `${hh}:${two(mm)}:${two(ss)}` : `${mm}:${two(ss)}`;
}

function fmtStarted(t) {
  if (t === null || t === undefined) return "";
  const d = new Date(t * 1000);
  const today = new Date();
  return d.toDateString() === today.toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}

function render({ model, el }) {
  let receivedAt = performance.now();
  const filter = h("select", { "data-testid": "tether-dashboard-filter", "aria-label": "filter by status" },
    h("option", { value: "" }, "all statuses"), ...STATUSES.map((s) => h("option", { value: s }, s)));
  const db = h("span", { class: "tether-dash-db" });
  const head = h("div", { class: "tether-dash-head" },
    h("span", { class: "tether-dash-title" }, "tether runs"), filter, db);
  const tbody = h("tbody");
  const table = h("table", { "data-testid": "tether-dashboard-table" },
    h("thead", {}, h("tr", {}, ...COLUMNS.map((c) => h("th", { scope: "col" }, c)))), tbody);
  const empty = h("div", { class: "tether-dash-empty", "data-testid": "tether-dashboard-empty" }, "no runs");
  const error = h("div", { class: "tether-dash-error", role: "alert", "data-testid": "tether-dashboard-error" });
  const root = h("div", { class: "tether-dashboard", "data-testid": "tether-dashboard" }, head, table, empty, error);
  el.append(root);

  function choose(id) {
    model.set("selected", model.get("selected") === id ? "" : id);
    model.save_changes();
  }

  function durationOf(r) {
    if (r.elapsed === null || r.elapsed === undefined) return null;
    return r.elapsed + (r.status === "running" ? (performance.now() - receivedAt) / 1000 : 0);
  }

  function row(r, selected) {
    const tr = h("tr", {
      "data-testid": "tether-dashboard-row", "data-run-id": r.id, "data-status": r.status,
      tabindex: "0", "aria-selected": String(selected),
    });
    const bar = h("span", { class: "tether-minibar" }, h("span", {}));
    bar.firstChild.style.width = r.percent === null || r.percent === undefined ? "0" : `${r.percent}%`;
    const progress = r.total ? `${r.done}/${r.total}` : (r.done ? String(r.done) : "");
    const name = h("td", { title: `run ${r.id} · key ${r.key_short}` }, `${r.pipeline} #${r.attempt}`);
    const status = h("td", { "data-testid": "tether-dashboard-status" }, h("span", { class: "tether-badge", "data-status": r.status }, r.status));
    const bad = r.damaged || [];
    if (bad.length) {  // a row edited behind tether's back
      tr.dataset.damaged = "";
      if (r.status !== "damaged") status.append(" ", h("span", { class: "tether-damaged", title: bad.join("; ") }, "damaged"));
      status.title = `damaged row: ${bad.join("; ")}`;
    }
    const duration = h("td", { "data-duration": "" }, fmtDuration(durationOf(r)));
    tr.append(name, status, h("td", {}, r.phase || ""), h("td", {}, bar, progress),
      h("td", {}, fmtStarted(r.started_at ?? r.created_at)), duration);
    tr.addEventListener("click", () => choose(r.id));
    tr.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); choose(r.id); }
    });
    return tr;
  }

  function update() {
    const rows = model.get("rows") || [];
    const sel = model.get("selected") || "";
    const focusedId = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.runId : undefined;
    tbody.replaceChildren(...rows.map((r) => row(r, r.id === sel)));
    if (focusedId) tbody.querySelector(`tr[data-run-id="${CSS.escape(focusedId)}"]`)?.focus();
    filter.value = model.get("status_filter") || "";
    db.textContent = model.get("db") || "";
    empty.hidden = rows.length > 0;
    table.hidden = rows.length === 0;
    const err = model.get("error") || "";
    error.textContent = err;
    error.hidden = !err;
    root.dataset.filter = filter.value;
  }

  function tick() {
    const rows = model.get("rows") || [];
    tbody.querySelectorAll("tr").forEach((tr, i) => {
      const r = rows[i];
      if (r && r.status === "running") tr.querySelector("[data-duration]").textContent = fmtDuration(durationOf(r));
    });
  }

  const onFilter = () => { model.set("status_filter", filter.value); model.save_changes(); };
  filter.addEventListener("change", onFilter);
  const onRows = () => { receivedAt = performance.now(); update(); };
  model.on("change:rows", onRows);
  model.on("change:selected", update);
  model.on("change:status_filter", update);
  model.on("change:error", update);
  const timer = setInterval(tick, 1000);
  update();

  return () => {
    clearInterval(timer);
    filter.removeEventListener("change", onFilter);
    model.off("change:rows", onRows);
    model.off("change:selected", update);
    model.off("change:status_filter", update);
    model.off("change:error", update);
    root.remove();
  };
}

export default { render };
