// The run list: GET /api/runs every second (one cached read on the server however many pages).
import { $, runRow, show, token } from "/static/common.js";

const EVERY_MS = 1000;
token(); // keep a ?token= for the run pages this tab opens

async function refresh() {
  try {
    const resp = await fetch("/api/runs", { cache: "no-store" });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const body = await resp.json();
    const now = Date.now() / 1000;
    const tbody = $("tether-runs").tBodies[0];
    tbody.replaceChildren(...body.runs.map((r) => runRow(r, now)));
    show($("tether-empty"), body.runs.length === 0);
    show($("tether-disconnected"), false);
    $("tether-mode").textContent = "live";
  } catch (err) {
    const note = $("tether-disconnected");
    note.textContent = `cannot reach tether serve (${err.message}); retrying`;
    show(note, true);
    $("tether-mode").textContent = "disconnected";
  } finally {
    setTimeout(refresh, EVERY_MS);
  }
}

refresh();
