// Shared by the pages of `tether serve`. Run text only ever reaches the page as textContent
// (el() makes text nodes of strings): a log line "<img onerror=...>" stays text.

const TOKEN_KEY = "tether-serve-token";

// The token printed at startup: taken from ?token= (then kept for this tab and removed from
// the address bar, so it is not copied along with the URL), or from earlier in this tab.
export function token() {
  const url = new URL(location.href);
  const given = url.searchParams.get("token");
  if (given) {
    sessionStorage.setItem(TOKEN_KEY, given);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
    return given;
  }
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = String(v);
    else node.setAttribute(k, String(v));
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

export const $ = (id) => document.querySelector(`[data-testid="${id}"]`);

export function show(node, on) { node.hidden = !on; }

export function fmtDuration(s) {
  if (s === null || s === undefined) return "-";
  s = Math.max(0, Math.floor(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const mm = h ? String(m).padStart(2, "0") : String(m);
  return `${h ? h + ":" : ""}${mm}:${String(sec).padStart(2, "0")}`;
}

export function fmtTime(ts) {
  if (ts === null || ts === undefined) return "-";
  const d = new Date(ts * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function num(x) {
  if (x === null || x === undefined) return "?";
  return Number.isInteger(x) ? x.toLocaleString("en-US") : x.toFixed(2);
}

export function progressText(r) {
  if (r.total === null || r.total === undefined) return r.done ? `${num(r.done)} done` : "";
  let text = `${num(r.done)}/${num(r.total)}`;
  if (r.percent !== null && r.percent !== undefined) text += ` (${Math.round(r.percent)}%)`;
  return text;
}

export function runLink(id, text) {
  return el("a", { href: `/runs/${encodeURIComponent(id)}`, "data-testid": "tether-run-link", text: text ?? id });
}

// A table row of a run (the list, children, attempts)
export function runRow(r, now) {
  const ended = r.ended_at ?? (r.status === "running" ? now : null);
  const duration = r.started_at !== null && ended !== null ? fmtDuration(ended - r.started_at) : "-";
  return el("tr", { "data-testid": "tether-run-row", "data-run-id": r.id, "data-status": r.status },
    el("td", {}, runLink(r.id, r.pipeline)),
    el("td", { text: r.attempt }),
    el("td", {}, el("span", { class: "badge", "data-status": r.status, "data-testid": "tether-status", text: r.status })),
    el("td", { text: r.phase ?? "-" }),
    el("td", { text: progressText(r) || "-" }),
    el("td", { text: fmtTime(r.started_at ?? r.created_at) }),
    el("td", { text: duration }),
    el("td", { class: "params", text: r.params || "-" }),
    el("td", { class: "mono dim", text: r.id }),
  );
}
