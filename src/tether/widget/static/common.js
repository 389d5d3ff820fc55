// Helpers shared by tether's widgets. panel.py and dashboard.py put this file before the
// widget's own file (panel.js, dashboard.js) in one ES module, the widget's _esm, so every name
// here is in scope there (biome.json declares them as globals of those files).
// Run text is set with textContent (h() makes text nodes), never parsed as HTML.
//
// One rule for what is not known: a formatter given nothing (null, undefined, NaN) returns "",
// and the caller says what a blank means where it matters.

// an element with attributes (false / null / undefined: left out; true: present) and children
// (nodes, or text)
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

export const two = (n) => String(n).padStart(2, "0");

const known = (x) => x !== null && x !== undefined && Number.isFinite(x);

// a count: 1,234 (up to 2 decimals for a fractional one)
export function fmtNum(x) {
  if (!known(x)) return "";
  if (!Number.isInteger(x)) return x.toLocaleString(undefined, { maximumFractionDigits: 2 });
  return x.toLocaleString();
}

// seconds as m:ss or h:mm:ss (ceil: rounded up, for a countdown that must not show 0 too early)
export function fmtDuration(s, ceil = false) {
  if (!known(s)) return "";
  const t = Math.max(0, ceil ? Math.ceil(s) : Math.floor(s));
  const hh = Math.floor(t / 3600);
  const mm = Math.floor((t % 3600) / 60);
  const ss = t % 60;
  return hh ? `${hh}:${two(mm)}:${two(ss)}` : `${mm}:${two(ss)}`;
}

// one time format everywhere (the CLI's): 24-hour, the date only when it is not today
export function fmtClock(t, seconds = true) {
  if (!known(t)) return "";
  const d = new Date(t * 1000);
  const clock = `${two(d.getHours())}:${two(d.getMinutes())}${seconds ? `:${two(d.getSeconds())}` : ""}`;
  if (d.toDateString() === new Date().toDateString()) return clock;
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${clock}`;
}

// an age or a wait in words: 12 s, 3 min, 5 h, 3 days
export function fmtAge(s) {
  if (!known(s)) return "";
  const t = Math.max(0, s);
  if (t < 60) return `${Math.floor(t)} s`;
  if (t < 3600) return `${Math.floor(t / 60)} min`;
  if (t < 86400 * 2) return `${Math.floor(t / 3600)} h`;
  return `${Math.floor(t / 86400)} days`;
}

// The kernel behind the view, as the widget manager knows it (JupyterLab and Notebook 7):
// undefined when the manager has none, null where the manager does not say (other front ends).
export function kernelOf(model) {
  try {
    const wm = model.widget_manager;
    return wm && "kernel" in wm ? wm.kernel || undefined : null;
  } catch (_e) {
    return null;
  }
}

// The notebook's outputs that show the widget `fb.model_id` get the new static text/html and
// text/plain, so a notebook saved now shows how its runs ended (JupyterLab / Notebook 7 only).
// Returns how many outputs were changed.
export function patchSavedOutputs(model, fb) {
  if (!fb?.final || !fb.model_id) return 0;
  let cells;
  try {
    cells = model.widget_manager.context.model.cells;
  } catch (_e) {
    return 0;
  }
  if (!cells || typeof cells.get !== "function") return 0;
  let patched = 0;
  for (let c = 0; c < cells.length; c++) {
    const outs = cells.get(c).outputs;
    if (!outs || typeof outs.get !== "function") continue;
    for (let i = 0; i < outs.length; i++) {
      const out = outs.get(i);
      const data = out?.data;
      const view = data?.["application/vnd.jupyter.widget-view+json"];
      if (!view || view.model_id !== fb.model_id) continue;
      if (data["text/html"] === fb["text/html"] && data["text/plain"] === fb["text/plain"]) continue;
      const json = out.toJSON();
      json.data = { ...json.data, "text/html": fb["text/html"], "text/plain": fb["text/plain"] };
      outs.set(i, json);
      patched++;
    }
  }
  return patched;
}
