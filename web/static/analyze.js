// The Analyze panel: drop or pick an image, choose a priority, watch its phases and
// findings arrive on its analysis:<id> channel (boxes drawn as they come), cancel it.
// Uses app.js's send/subscribe; app.js routes analysis:<id> messages to onAnalysis.
"use strict";

const analysis = {
  current: null,  // {id, channel, bitmap, events: Map(seq -> event), findings: [], outcome}
  dirty: false,
};

function analysisChannels() {
  return analysis.current && !analysis.current.outcome ? [analysis.current.channel] : [];
}

async function submitAnalysis(file) {
  if (!file) return;
  const priority = document.getElementById("analyze-priority").value;
  const form = new FormData();
  form.append("file", file);
  form.append("priority", priority);
  setAnalysisPhase("uploading", 0);
  document.getElementById("analyze-findings").replaceChildren();
  document.getElementById("analyze-summary").textContent = "";
  let bitmap = null;
  try { bitmap = await createImageBitmap(file); } catch (e) { bitmap = null; }
  const answer = await fetch("/api/v1/stream/analyze", { method: "POST", body: form });
  const body = await answer.json();
  if (!answer.ok) {
    setAnalysisPhase(`refused: ${body.error}`, 0);
    document.getElementById("analyze-summary").textContent = body.message || "";
    return;
  }
  analysis.current = { id: body.id, channel: body.channel, bitmap, events: new Map(),
                       findings: [], outcome: null };
  analysis.dirty = true;
  document.getElementById("analyze-canvas").dataset.requestId = body.id;
  document.getElementById("analyze-cancel").disabled = false;
  subscribe([body.channel]);
}

function analysisShed(shed) {
  // The server shed some of this request's events (its buffer for this page was
  // full): subscribing anew brings every event again (duplicates are skipped by seq).
  const current = analysis.current;
  if (!current || current.outcome) return;
  const count = shed[current.channel] || 0;
  if (count <= (current.shed || 0)) return;
  current.shed = count;
  send({ type: "unsubscribe", payload: { channels: [current.channel] } });
  state.subscribed.delete(current.channel);
  subscribe([current.channel]);
}

function onAnalysis(message) {
  const current = analysis.current;
  if (!current || message.channel !== current.channel) return;
  const events = message.type === "backfill" ? message.payload.events : [message.payload];
  for (const event of events) {
    if (current.events.has(event.seq)) continue;  // a replay or a resubscribe's backfill
    current.events.set(event.seq, event);
    applyEvent(current, event);
  }
}

function applyEvent(current, event) {
  const p = event.payload;
  if (event.type === "upload_update") {
    setAnalysisPhase(`upload: ${p.phase}`, 0);
  } else if (event.type === "stream_update") {
    setAnalysisPhase(p.phase, p.progress);
  } else if (event.type === "token") {
    current.findings.push(p.data);
    const li = document.createElement("li");
    li.textContent = p.text;
    document.getElementById("analyze-findings").append(li);
    analysis.dirty = true;
  } else if (event.type === "complete" || event.type === "cancelled" || event.type === "error") {
    if (event.type === "error" && p.recoverable) return;
    current.outcome = event.type;
    setAnalysisPhase(event.type, event.type === "complete" ? 100 : null);
    document.getElementById("analyze-cancel").disabled = true;
    const summary = document.getElementById("analyze-summary");
    if (event.type === "complete") {
      const s = p.summary;
      summary.textContent = `${s.total_tokens} findings in ${Math.round(s.total_ms)} ms ` +
        `(queued ${Math.round(s.queue_ms)} ms, first token ${fmtMs(s.first_token_ms)}, ` +
        `batch ${s.most_common_batch_size}, worker ${Math.round(s.max_memory_usage_mb)} MB)`;
    } else if (event.type === "error") {
      summary.textContent = `${p.code}: ${p.message}`;
    } else {
      summary.textContent = `cancelled during ${p.phase}`;
    }
  }
}

function fmtMs(value) {
  return value === null || value === undefined ? "-" : `${value.toFixed(1)} ms`;
}

function setAnalysisPhase(text, progress) {
  const phase = document.getElementById("analyze-phase");
  phase.textContent = text;
  phase.dataset.phase = text;
  if (progress !== null) document.getElementById("analyze-progress").value = progress;
}

function drawAnalysis() {
  const current = analysis.current;
  const canvas = document.getElementById("analyze-canvas");
  if (!current || !current.bitmap) return;
  const { bitmap, findings } = current;
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  ctx.lineWidth = Math.max(2, bitmap.width / 320);
  ctx.font = `${Math.max(12, bitmap.width / 50)}px system-ui`;
  findings.forEach((f, i) => {  // boxes are in the image's own pixels
    const [x1, y1, x2, y2] = f.box;
    ctx.strokeStyle = ctx.fillStyle = COLORS[i % COLORS.length];
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.fillText(`${f.label} ${f.score.toFixed(2)}`, x1 + 2, Math.max(12, y1 - 4));
  });
  canvas.dataset.boxes = String(findings.length);
}

const MEMORY_LEVELS = ["normal", "warning", "pressure", "extreme"];

function showWorkerMemory(source, latest) {
  // An inference worker's memory monitor (kestrel/ondemand/pressure.py): its level,
  // and how often it warned, halved its batches and shed low requests.
  const value = (field) => (latest[field] ? latest[field].value : null);
  const level = MEMORY_LEVELS[value("memory_level")] || "unknown";
  const el = document.getElementById("analyze-memory");
  el.dataset.level = level;
  el.textContent = `${source} memory: ${level}, RSS ${Math.round(value("worker_rss_mb"))} MB, ` +
    `host ${Math.round(value("host_memory_percent"))} % in use; warnings ${value("memory_warnings")}, ` +
    `batch halvings ${value("memory_batch_halvings")}, low requests shed ${value("memory_low_shed")}`;
}

function cancelAnalysis() {
  const current = analysis.current;
  if (!current || current.outcome) return;
  fetch(`/api/v1/stream/${current.id}`, { method: "DELETE" });
  setAnalysisPhase("cancelling", null);
}

document.getElementById("analyze-form").addEventListener("submit", (event) => {
  event.preventDefault();
  submitAnalysis(document.getElementById("analyze-file").files[0]);
});
document.getElementById("analyze-cancel").addEventListener("click", cancelAnalysis);
const drop = document.getElementById("analyze-drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  submitAnalysis(event.dataTransfer.files[0]);
});
