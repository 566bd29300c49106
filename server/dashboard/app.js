// The fedbpt dashboard: polls the server's dashboard routes every two seconds and redraws; no page reloads,
// no libraries, nothing fetched from outside the server.
"use strict";

const POLL_MS = 2000;
const LATE_AFTER_S = 60; // a party silent this long (no long-poll, no report) is shown as missing
const state = { token: sessionStorage.getItem("fedbpt-token") || "", job: location.hash.slice(1), timer: null };

const $ = (id) => document.getElementById(id);
const NS = "http://www.w3.org/2000/svg";

async function get(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${state.token}` } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  return `${Math.round(seconds / 60)} min ago`;
}

function fixed(value, digits) {
  return value === null || value === undefined ? "" : Number(value).toFixed(digits);
}

function drawJobs(jobs) {
  const rows = $("job-rows");
  rows.replaceChildren();
  if (!state.job && jobs.length) state.job = (jobs.find((job) => job.status === "running") || jobs[0]).id;
  for (const job of jobs) {
    const row = rows.insertRow();
    row.className = "selectable" + (job.id === state.job ? " selected" : "");
    row.dataset.job = job.id;
    row.onclick = () => { state.job = job.id; location.hash = job.id; poll(); };
    const spec = job.spec;
    const task = typeof spec.task === "string" ? spec.task : spec.task.name;
    for (const text of [job.id, job.status, `${job.round} (${job.kind})`, task, spec.model.name,
      String(spec.federation.parties)]) cell(row, text);
  }
}

// A line chart in an SVG: series of [x, y] points on a left or right axis, horizontal reference lines, rings
// on marked points.
function chart(svg, series, options = {}) {
  svg.replaceChildren();
  const box = svg.viewBox.baseVal;
  const pad = { left: 40, right: options.right ? 40 : 10, top: 10, bottom: 22 };
  const all = series.flatMap((s) => s.points);
  if (!all.length) return;
  const xs = all.map((p) => p[0]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  const range = (axis) => {
    const ys = series.filter((s) => (s.axis || "left") === axis).flatMap((s) => s.points.map((p) => p[1]))
      .concat((options.lines || []).filter((l) => (l.axis || "left") === axis).map((l) => l.y));
    if (!ys.length) return [0, 1];
    const [lo, hi] = [Math.min(...ys), Math.max(...ys)];
    const margin = (hi - lo) * 0.1 || Math.abs(hi) * 0.05 || 1;
    return [lo >= 0 ? Math.max(0, lo - margin) : lo - margin, hi + margin];
  };
  const ranges = { left: range("left"), right: range("right") };
  const X = (x) => pad.left + ((x - x0) / (x1 - x0)) * (box.width - pad.left - pad.right);
  const Y = (y, axis) => {
    const [lo, hi] = ranges[axis || "left"];
    return box.height - pad.bottom - ((y - lo) / (hi - lo)) * (box.height - pad.top - pad.bottom);
  };
  const add = (tag, attributes, text) => {
    const element = document.createElementNS(NS, tag);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
    if (text !== undefined) element.textContent = text;
    svg.appendChild(element);
    return element;
  };
  add("line", { x1: pad.left, x2: pad.left, y1: pad.top, y2: box.height - pad.bottom, class: "axis" });
  add("line", { x1: pad.left, x2: box.width - pad.right, y1: box.height - pad.bottom, y2: box.height - pad.bottom,
    class: "axis" });
  for (const axis of options.right ? ["left", "right"] : ["left"]) {
    const [lo, hi] = ranges[axis];
    const x = axis === "left" ? 2 : box.width - pad.right + 4;
    for (const y of [lo, (lo + hi) / 2, hi]) add("text", { x, y: Y(y, axis) + 3 }, y.toFixed(options.digits ?? 3));
  }
  for (let x = x0; x <= x1; x += Math.max(1, Math.ceil((x1 - x0) / 10))) {
    add("text", { x: X(x) - 3, y: box.height - 6 }, String(x));
  }
  for (const line of options.lines || []) {
    add("line", { x1: pad.left, x2: box.width - pad.right, y1: Y(line.y, line.axis), y2: Y(line.y, line.axis),
      stroke: line.color, "stroke-dasharray": "4 3" });
    add("text", { x: pad.left + 4, y: Y(line.y, line.axis) - 3, fill: line.color }, line.name);
  }
  series.forEach((s, index) => {
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1], s.axis).toFixed(1)}`);
    add("path", { d: d.join(" "), fill: "none", stroke: s.color, "stroke-width": 2,
      "stroke-dasharray": s.dash || "", class: `series ${s.id || ""}`, "data-points": s.points.length });
    for (const p of s.points) add("circle", { cx: X(p[0]), cy: Y(p[1], s.axis), r: 2.5, fill: s.color });
    for (const p of s.points.filter((p) => (s.marked || []).includes(p[0]))) {
      add("circle", { cx: X(p[0]), cy: Y(p[1], s.axis), r: 6, fill: "none", stroke: s.color, class: "best" });
    }
  });
  const legend = svg.parentElement.querySelector(".legend");
  legend.replaceChildren(...series.map((s) => {
    const entry = document.createElement("span");
    entry.style.color = s.color;
    entry.textContent = `${s.dash ? "- - " : "—— "}${s.name}`;
    return entry;
  }));
}

function drawRound(job) {
  const reports = job.reports_this_round;
  const left = job.deadline === null ? null : Math.max(0, job.deadline - job.now);
  const progress = $("round-progress");
  progress.replaceChildren();
  const text = document.createElement("span");
  text.id = "round-text";
  text.textContent = job.status !== "running" ? `${job.status} at round ${job.round}` :
    `round ${job.round} (${job.kind}): ${reports} of ${job.per_round} reports in (closes after the deadline at ` +
    `${job.quorum}); deadline in ${Math.floor(left / 60)} min ${Math.round(left % 60)} s  `;
  const bar = document.createElement("span");
  bar.className = "bar";
  const fill = document.createElement("span");
  fill.style.width = `${Math.min(100, (100 * reports) / job.per_round)}%`;
  bar.appendChild(fill);
  progress.append(text);
  if (job.status === "running") progress.append(bar);
}

function drawJob(job) {
  $("job").hidden = false;
  const spec = job.spec;
  const history = job.history;
  $("job-title").textContent = `Job ${job.id}: ${spec.federation.aggregator} on ` +
    `${typeof spec.task === "string" ? spec.task : spec.task.name} with ${spec.model.name}` +
    (history.start ? `, start ${JSON.stringify(history.start)}` : "");
  drawRound(job);
  const scoring = spec.prompt.calibrate ? "calibrated" : "raw";
  const scored = history.rounds.filter((r) => r.kind !== "start" && r.loss !== undefined);
  const start = history.accuracy.find((a) => a.round === 0);
  const best = history.best ? [history.best.round] : [];
  const accuracy = (key) => history.accuracy.filter((a) => a[key] !== undefined).map((a) => [a.round, a[key]]);
  const both = history.accuracy.length && history.accuracy.every((a) => a.raw !== undefined);
  const curves = both ? [
    { id: "calibrated", name: "held-out accuracy, calibrated", points: accuracy("calibrated"), color: "#1565c0",
      marked: scoring === "calibrated" ? best : [] },
    { id: "raw", name: "held-out accuracy, raw", points: accuracy("raw"), color: "#64b5f6", dash: "2 2",
      marked: scoring === "raw" ? best : [] },
  ] : [{ id: scoring, name: `held-out accuracy (${scoring})`, points: accuracy("accuracy"), color: "#1565c0",
    marked: best }];
  const lines = start ? [{ name: "chosen start (round 0)", y: start.accuracy, color: "#6a1b9a" }] : [];
  if (history.zero_shot) {
    lines.push({ name: "zero-shot, calibrated", y: history.zero_shot.calibrated, color: "#757575" },
      { name: "zero-shot, raw", y: history.zero_shot.raw, color: "#bdbdbd" });
  }
  chart($("curve"), [
    ...curves,
    { id: "loss", name: "pooled training loss of the prompt scored in the round",
      points: scored.map((r) => [r.round, r.loss]), color: "#c62828", dash: "5 3", axis: "right" },
  ], { right: true, lines });
  chart($("steps"), [{ id: "sigma", name: "step", points: history.rounds.filter((r) => r.sigma !== undefined)
    .map((r) => [r.round, r.sigma]), color: "#2e7d32" }]);
  const bytes = history.rounds.filter((r) => r.bytes_per_party);
  chart($("bytes"), [
    { id: "sent", name: "up (sent)", points: bytes.map((r) => [r.round, r.bytes_per_party.sent]), color: "#ef6c00" },
    { id: "received", name: "down (received)", points: bytes.map((r) => [r.round, r.bytes_per_party.received]),
      color: "#00838f", dash: "4 2" },
  ], { digits: 0 });
  const extras = [`robust aggregation: ${job.robust}`];
  const spent = history.rounds.filter((r) => r.epsilon !== undefined).map((r) => r.epsilon);
  if (spent.length) {
    extras.push(`privacy spent: epsilon ${spent[spent.length - 1].toFixed(2)} at delta ${spec.privacy.delta}` +
      (job.epsilon_budget ? ` of a budget of ${job.epsilon_budget}` : ""));
  }
  if (history.best) extras.push(`best so far: round ${history.best.round}'s prompt`);
  $("extras").textContent = extras.join(" · ");
  const rows = $("party-rows");
  rows.replaceChildren();
  const othersIn = job.parties.some((p) => p.submitted);
  for (const party of job.parties) {
    const silent = party.last_seen === null ? Infinity : job.now - party.last_seen;
    const row = rows.insertRow();
    row.dataset.party = party.name;
    if (job.status === "running" && !party.submitted) {
      if (silent > LATE_AFTER_S) row.className = "missing";
      else if (othersIn && job.deadline !== null && job.now > job.deadline) row.className = "late";
    }
    cell(row, party.name);
    cell(row, party.submitted ? "in" : job.status === "running" ? "waiting" : "");
    cell(row, party.last_seen === null ? "never" : ago(silent));
    cell(row, party.client || "");
    cell(row, String(party.reports), "reports");
    cell(row, party.examples === null ? "" : String(party.examples));
    cell(row, fixed(party.last_loss, 4));
  }
}

async function poll() {
  clearTimeout(state.timer);
  if (!state.token) return;
  try {
    drawJobs(await get("/v1/dashboard/jobs"));
    if (state.job) drawJob(await get(`/v1/dashboard/jobs/${encodeURIComponent(state.job)}`));
    $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
    $("status").className = "";
  } catch (error) {
    $("status").textContent = error.message;
    $("status").className = "error";
  }
  state.timer = setTimeout(poll, POLL_MS);
}

$("login").onsubmit = (event) => {
  event.preventDefault();
  state.token = $("token").value.trim();
  sessionStorage.setItem("fedbpt-token", state.token);
  poll();
};
poll();
