// Kestrel dashboard: one WebSocket (web/PROTOCOL.md), canvas drawing on
// requestAnimationFrame, reconnect with backoff, and its own frame timing (UX metrics).
"use strict";

const SYSTEM_FIELDS = ["cpu_percent", "memory_percent", "network_bytes_in", "disk_io_write_mb"];
// A model's charts: the first four of these it reports (inference workers, LLM servers).
const MODEL_FIELDS = ["fps", "latency_ms", "queue_wait_ms", "batch_size", "tokens_per_second",
                      "ttft_ms", "gpu_utilization", "vram_used_mb", "cache_hit_rate"];
const MAX_MODELS = 4;
const BASE_CHANNELS = ["cameras", "alerts", "analytics", "system", "metrics:system"];
const BUDGET_MS = 1000 / 60;

const state = {
  ws: null,
  subscribed: new Set(),
  backoffMs: 500,
  cameras: new Map(),   // id -> {result, image, loading, tile, dirty}
  charts: new Map(),    // "source|field" -> {ones: [], tens: [], five: null, latest, box, dirty}
  models: new Set(),    // model sources shown (metrics:<source> subscribed)
  charted: new Set(),   // sources whose charts exist
  alerts: new Map(),    // alert_id -> alert
  alertsDirty: false,
  temporal: new Map(),  // "source|field" -> its latest temporal analysis
  temporalDirty: false,
  ux: { frames: [], dropped: 0, inputLatency: null, pendingInput: null, last: null,
        report: { timestamp: [], data: { frame_time_ms: [], dropped_frames: [], input_latency_ms: [] } } },
};

// --- connection --------------------------------------------------------------------------
function connect() {
  setConnection("connecting");
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  state.ws = ws;
  ws.onopen = () => send({ type: "hello", payload: { client: "kestrel-dashboard" } });
  ws.onmessage = (event) => handle(JSON.parse(event.data));
  ws.onclose = (event) => {
    // 4001: this server has a token and the page has none (web/access.py).
    setConnection(event.code === 4001 ? "token required: open /?token=..." : "closed");
    state.subscribed.clear();
    const wait = state.backoffMs;
    state.backoffMs = Math.min(state.backoffMs * 2, 10000);
    setTimeout(connect, wait);
  };
}

function send(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify({ v: 1, ...message }));
  }
}

function subscribe(channels) {
  const fresh = channels.filter((c) => !state.subscribed.has(c));
  if (fresh.length === 0) return;
  fresh.forEach((c) => state.subscribed.add(c));
  send({ type: "subscribe", payload: { channels: fresh } });
}

function setConnection(text) {
  const el = document.getElementById("connection");
  el.textContent = text;
  el.dataset.state = text;
}

// --- messages ----------------------------------------------------------------------------
function handle(message) {
  switch (message.type) {
    case "welcome":
      setConnection("open");
      state.backoffMs = 500;
      // A reconnect resubscribes to everything this page already shows.
      subscribe([
        ...BASE_CHANNELS,
        ...[...state.cameras.keys()].map((id) => `camera:${id}`),
        ...[...state.models].map((source) => `metrics:${source}`),
        ...analysisChannels(),  // analyze.js: the request being watched
      ]);
      break;
    case "backfill":
    case "update":
      onData(message);
      break;
    case "backpressure": {
      const el = document.getElementById("backpressure");
      el.textContent = message.payload.state;
      el.dataset.state = message.payload.state;
      analysisShed(message.payload.shed || {});  // analyze.js: read a request's events anew
      break;
    }
    case "ping":
      send({ type: "pong", payload: message.payload });
      break;
    case "error":
      console.warn("kestrel:", message.payload.code, message.payload.message);
      break;
  }
}

function onData(message) {
  const { channel, payload } = message;
  if (channel === "cameras") {
    const summaries = message.type === "backfill" ? Object.values(payload) : [payload];
    summaries.forEach((summary) => camera(summary.camera_id));
  } else if (channel.startsWith("camera:")) {
    const result = message.type === "backfill" ? payload.result : payload;
    if (result) showResult(result);
  } else if (channel === "alerts") {
    const alerts = message.type === "backfill" ? [...payload.recent, ...payload.active] : [payload];
    alerts.forEach((a) => state.alerts.set(a.alert_id, a));
    state.alertsDirty = true;
  } else if (channel === "analytics") {
    const analyses = message.type === "backfill" ? Object.values(payload) : [payload];
    analyses.forEach((a) => state.temporal.set(`${a.source}|${a.field}`, a));
    state.temporalDirty = true;
  } else if (channel.startsWith("metrics:")) {
    onMetrics(channel.slice("metrics:".length), message);
  } else if (channel === "system") {
    showModels(payload.sources || []);
  } else if (channel.startsWith("analysis:")) {
    onAnalysis(message);  // analyze.js
  }
}

function onMetrics(source, message) {
  const { payload } = message;
  if (message.type === "backfill" || message.key === "latest") {
    chartsOf(source, payload.latest);
    if (payload.latest.memory_level) showWorkerMemory(source, payload.latest);  // analyze.js
  }
  if (message.type === "backfill") {
    for (const chart of state.charts.values()) {
      if (chart.source !== source) continue;
      const field = chart.field;
      chart.ones = (payload.aggregates["1s"][field] || []).map((a) => [a.window_end_ms, a.mean]);
      chart.tens = (payload.aggregates["10s"][field] || []).map((a) => [a.window_end_ms, a.mean]);
      const five = payload.aggregates["5m"][field] || [];
      chart.five = five.length ? five[five.length - 1].mean : null;
      chart.dirty = true;
    }
  }
  if (message.type === "backfill" || message.key === "latest") {
    for (const [field, sample] of Object.entries(payload.latest)) {
      const chart = state.charts.get(`${source}|${field}`);
      if (chart) { chart.latest = sample.value; chart.dirty = true; }
    }
  } else if (message.key.startsWith("agg:")) {
    const [, field, window] = message.key.split(":");
    const chart = state.charts.get(`${source}|${field}`);
    if (!chart || payload.mean === null) return;
    if (window === "1s") chart.ones.push([payload.window_end_ms, payload.mean]);
    if (window === "10s") chart.tens.push([payload.window_end_ms, payload.mean]);
    if (window === "5m") chart.five = payload.mean;
    const horizon = payload.window_end_ms - 300000;
    chart.ones = chart.ones.filter(([t]) => t > horizon);
    chart.tens = chart.tens.filter(([t]) => t > horizon);
    chart.dirty = true;
  }
}

// Model sources come from the server's status (the "system" channel, each second).
function showModels(sources) {
  const fresh = sources.filter((s) => s.startsWith("model:") && !state.models.has(s));
  for (const source of fresh.slice(0, MAX_MODELS - state.models.size)) {
    state.models.add(source);
    subscribe([`metrics:${source}`]);
  }
}

// --- cameras -----------------------------------------------------------------------------
function camera(id) {
  if (state.cameras.has(id)) return state.cameras.get(id);
  const container = document.getElementById("cameras");
  container.querySelector(".empty")?.remove();
  const tile = document.createElement("div");
  tile.className = "tile";
  tile.dataset.camera = id;
  tile.innerHTML = `<canvas width="640" height="480"></canvas>
    <div class="caption"><b>${id}</b><span class="counts">-</span><span class="latency">-</span></div>`;
  container.appendChild(tile);
  const cam = { result: null, image: null, loading: false, tile, dirty: false, drawn: 0 };
  state.cameras.set(id, cam);
  subscribe([`camera:${id}`]);
  return cam;
}

function showResult(result) {
  const cam = camera(result.camera_id);
  if (cam.loading) return; // one frame in flight per camera: the newest wins next time
  cam.loading = true;
  const image = new Image();
  image.onload = () => {
    cam.image = image;
    cam.result = result;
    cam.loading = false;
    cam.dirty = true;
  };
  image.onerror = () => {
    cam.result = result; // no cached frame: draw the boxes on black
    cam.loading = false;
    cam.dirty = true;
  };
  image.src = `/api/v1/frames/${encodeURIComponent(result.frame_id)}.jpg`;
}

const COLORS = ["#5aa9ff", "#4cc38a", "#e8b339", "#ef5b5b", "#b48cff", "#4dd2d2"];

function drawCamera(cam) {
  const canvas = cam.tile.querySelector("canvas");
  const ctx = canvas.getContext("2d");
  const result = cam.result;
  const meta = result.data.metadata;
  canvas.width = meta.width;
  canvas.height = meta.height;
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (cam.image) ctx.drawImage(cam.image, 0, 0, canvas.width, canvas.height);
  ctx.lineWidth = 3;
  ctx.font = "bold 18px system-ui";
  for (const obj of result.data.post_processing_result.tracked_objects) {
    const [x1, y1, x2, y2] = obj.box;
    const color = COLORS[obj.track_id % COLORS.length];
    ctx.strokeStyle = color;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const label = `#${obj.track_id} ${obj.label} ${obj.score.toFixed(2)}`;
    ctx.fillStyle = color;
    ctx.fillRect(x1, Math.max(0, y1 - 22), ctx.measureText(label).width + 8, 22);
    ctx.fillStyle = "#000";
    ctx.fillText(label, x1 + 4, Math.max(16, y1 - 5));
  }
  const counts = result.data.post_processing_result.agg_summary.counts;
  cam.tile.querySelector(".counts").textContent =
    Object.entries(counts).map(([k, v]) => `${k}: ${v}`).join("  ") || "nothing";
  cam.tile.querySelector(".latency").textContent = `${(result.data.processing_time * 1000).toFixed(0)} ms`;
  cam.drawn += 1;
  cam.tile.dataset.drawn = String(cam.drawn);
}

// --- charts ------------------------------------------------------------------------------
// The charts of a source, made once it reports: the system's fixed four, a model's first
// four of MODEL_FIELDS.
function chartsOf(source, latest) {
  if (state.charted.has(source)) return;  // on every update: a set, not a scan
  const reported = Object.keys(latest || {});
  const fields = source === "system"
    ? SYSTEM_FIELDS : MODEL_FIELDS.filter((f) => reported.includes(f)).slice(0, 4);
  fields.forEach((field) => chartFor(source, field));
}

function groupFor(source) {
  const id = `charts-${source.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  let grid = document.getElementById(id);
  if (grid) return grid;
  const title = document.createElement("h2");
  title.textContent = source.startsWith("model:") ? `Model ${source.slice(6)}` : source;
  grid = document.createElement("div");
  grid.className = "charts";
  grid.id = id;
  document.getElementById("metrics-section").append(title, grid);
  return grid;
}

function chartFor(source, field) {
  const key = `${source}|${field}`;
  if (state.charts.has(key)) return state.charts.get(key);
  const box = document.createElement("div");
  box.className = "chart";
  box.dataset.source = source;
  box.dataset.field = field;
  box.innerHTML = `<div class="title"><span>${field}</span><b>-</b></div><canvas></canvas>`;
  (source === "system" ? document.getElementById("charts") : groupFor(source)).appendChild(box);
  state.charted.add(source);
  const chart = { source, field, ones: [], tens: [], five: null, latest: null, box,
                  dirty: true, drawn: 0 };
  state.charts.set(key, chart);
  return chart;
}

function drawChart(chart) {
  const canvas = chart.box.querySelector("canvas");
  const width = (canvas.width = canvas.clientWidth * devicePixelRatio);
  const height = (canvas.height = canvas.clientHeight * devicePixelRatio);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  const points = [...chart.ones, ...chart.tens];
  if (points.length) {
    const tMax = Math.max(...points.map(([t]) => t));
    const first = Math.min(...points.map(([t]) => t));
    // At most the 5 minutes held, at least one minute, so a young chart is not a sliver.
    const tMin = Math.min(tMax - 60000, Math.max(tMax - 300000, first - 1000));
    const values = points.map(([, v]) => v).concat(chart.five === null ? [] : [chart.five]);
    let vMin = Math.min(...values), vMax = Math.max(...values);
    if (vMax - vMin < 1e-9) { vMin -= 1; vMax += 1; }
    const x = (t) => ((t - tMin) / (tMax - tMin)) * width;
    const y = (v) => height - 4 - ((v - vMin) / (vMax - vMin)) * (height - 8);
    if (chart.five !== null) {
      ctx.fillStyle = "rgba(90,169,255,0.12)";
      ctx.fillRect(0, y(chart.five) - 3, width, 6);
    }
    ctx.strokeStyle = "#e8b339";
    ctx.lineWidth = 1.5 * devicePixelRatio;
    ctx.beginPath();
    chart.tens.forEach(([t, v], i) => {
      const left = x(t - 10000);
      if (i === 0) ctx.moveTo(left, y(v)); else ctx.lineTo(left, y(v));
      ctx.lineTo(x(t), y(v));
    });
    ctx.stroke();
    ctx.strokeStyle = "#5aa9ff";
    ctx.beginPath();
    chart.ones.forEach(([t, v], i) => (i === 0 ? ctx.moveTo(x(t), y(v)) : ctx.lineTo(x(t), y(v))));
    ctx.stroke();
  }
  const latest = chart.latest === null ? "-" : Number(chart.latest).toFixed(1);
  chart.box.querySelector("b").textContent = latest;
  chart.drawn += 1;
  chart.box.dataset.drawn = String(chart.drawn);
  chart.box.dataset.points = String(chart.ones.length);
}

// --- alerts ------------------------------------------------------------------------------
function drawAlerts() {
  const list = document.getElementById("alerts");
  const alerts = [...state.alerts.values()].sort((a, b) => b.timestamp - a.timestamp).slice(0, 50);
  list.replaceChildren(...alerts.map((a) => {
    const li = document.createElement("li");
    li.className = `${a.state} ${a.severity}`;
    const value = a.value === null ? "" : ` = ${Number(a.value).toFixed(2)}`;
    li.innerHTML = `<div><b></b></div><div class="meta"></div>`;
    li.querySelector("b").textContent = `${a.rule} on ${a.source}.${a.field}${value}`;
    li.querySelector(".meta").textContent =
      `${a.state} · ${a.check} · ${new Date(a.timestamp).toLocaleTimeString()}`;
    return li;
  }));
  if (alerts.length === 0) list.innerHTML = `<li class="empty">no alerts</li>`;
}

// --- temporal analysis -------------------------------------------------------------------
function describeRegime(regime) {
  if (!regime) return "collecting";
  const parts = [regime.kind.replace("_", " ")];
  if (regime.period_s !== null) parts.push(`period ${regime.period_s.toFixed(1)} s`);
  if (regime.lyapunov_per_s !== null) parts.push(`λ ${regime.lyapunov_per_s.toFixed(3)}/s`);
  return parts.join(", ");
}

function drawTemporal() {
  const body = document.querySelector("#temporal tbody");
  const rows = [...state.temporal.values()].sort((a, b) =>
    `${a.source}|${a.field}`.localeCompare(`${b.source}|${b.field}`));
  body.replaceChildren(...rows.map((a) => {
    const tr = document.createElement("tr");
    tr.dataset.key = `${a.source}|${a.field}`;
    tr.dataset.regime = a.regime ? a.regime.kind : "";
    const matches = a.last_matches.map((m) =>
      `${m.pattern} (${m.measure} ${m.distance.toFixed(2)} ≤ ${m.threshold})`).join(", ");
    const when = a.last_matched_ms ? ` at ${new Date(a.last_matched_ms).toLocaleTimeString()}` : "";
    for (const text of [`${a.source}.${a.field}`, describeRegime(a.regime),
                        matches ? matches + when : "no match"]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
  if (rows.length === 0) {
    body.innerHTML = `<tr class="empty"><td>no watched field analysed yet</td></tr>`;
  }
}

// --- the frame loop and UX metrics --------------------------------------------------------
function frame(now) {
  const ux = state.ux;
  let input = null;
  if (ux.pendingInput !== null) {
    input = ux.inputLatency = now - ux.pendingInput;
    ux.pendingInput = null;
  }
  // Frames missed: an interval between animation frames well over the budget.
  const interval = ux.last === null ? null : now - ux.last;
  const missed = interval !== null && interval > 1.5 * BUDGET_MS
    ? Math.round(interval / BUDGET_MS) - 1 : 0;
  ux.dropped += missed;
  ux.last = now;
  const started = performance.now();
  for (const cam of state.cameras.values()) {
    if (cam.dirty && cam.result) { drawCamera(cam); cam.dirty = false; }
    if (performance.now() - started > 0.8 * BUDGET_MS) break; // the rest next frame
  }
  for (const chart of state.charts.values()) {
    if (chart.dirty && performance.now() - started < 0.8 * BUDGET_MS) {
      drawChart(chart);
      chart.dirty = false;
    }
  }
  if (state.alertsDirty) { drawAlerts(); state.alertsDirty = false; }
  if (state.temporalDirty) { drawTemporal(); state.temporalDirty = false; }
  if (analysis.dirty) { drawAnalysis(); analysis.dirty = false; }  // analyze.js
  // Frame time is this frame's own work, what the 16.67 ms budget is for: the
  // interval between frames is the display's (about 16.7 ms at 60 Hz whatever the
  // page does), so judging it against the budget would flag every other frame.
  const work = performance.now() - started;
  ux.frames.push(work);
  if (ux.frames.length > 60) ux.frames.shift();
  if (interval !== null) {
    const r = ux.report;  // this frame as a UX sample (digest A), sent in batches
    r.timestamp.push(Math.round(performance.timeOrigin + now));
    r.data.frame_time_ms.push(work);
    r.data.dropped_frames.push(missed);
    r.data.input_latency_ms.push(input);
  }
  if (ux.frames.length) {
    const mean = ux.frames.reduce((a, b) => a + b, 0) / ux.frames.length;
    document.getElementById("ux-frame").textContent = mean.toFixed(2);
    document.getElementById("ux-dropped").textContent = String(ux.dropped);
  }
  if (ux.inputLatency !== null) {
    document.getElementById("ux-input").textContent = ux.inputLatency.toFixed(1);
  }
  requestAnimationFrame(frame);
}

setInterval(() => {  // the page's own timing goes to metrics.ui through the server
  const r = state.ux.report;
  const open = state.ws && state.ws.readyState === WebSocket.OPEN;
  if (open && r.timestamp.length) send({ type: "ux", payload: r });  // offline: dropped
  state.ux.report = { timestamp: [], data: { frame_time_ms: [], dropped_frames: [], input_latency_ms: [] } };
}, 250);

for (const type of ["pointerdown", "keydown"]) {
  addEventListener(type, (event) => { state.ux.pendingInput = event.timeStamp; });
}
SYSTEM_FIELDS.forEach((field) => chartFor("system", field));
// Once every script of the page has run (analyze.js too): the frame loop and the
// messages use what they define.
addEventListener("DOMContentLoaded", () => {
  connect();
  requestAnimationFrame(frame);
});
