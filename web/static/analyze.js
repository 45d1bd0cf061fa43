// The Analyze panel: drop or pick an image or a clip, choose a priority, watch its phases
// and findings arrive on its analysis:<id> channel (boxes drawn as they come), cancel it.
// A clip's tokens are its frames: the canvas shows the picked frame (the latest, or the
// slider's) from the clip itself, with its tracked boxes; a clip the browser cannot play
// gets the boxes on a blank frame. Uses app.js's send/subscribe; app.js routes
// analysis:<id> messages to onAnalysis.
"use strict";

const analysis = {
  current: null,  // {id, channel, bitmap, clip, events: Map(seq -> event), findings: [],
                  //  frames: [], shown (frame index), outcome}
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
  const video = document.getElementById("analyze-video");
  if (video.src) URL.revokeObjectURL(video.src);
  video.removeAttribute("src");
  const slider = document.getElementById("analyze-frame");
  slider.hidden = true;
  let bitmap = null;
  try { bitmap = await createImageBitmap(file); } catch (e) { bitmap = null; }
  const answer = await fetch("/api/v1/stream/analyze", { method: "POST", body: form });
  const body = await answer.json();
  if (!answer.ok) {
    setAnalysisPhase(`refused: ${body.error}`, 0);
    document.getElementById("analyze-summary").textContent = body.message || "";
    return;
  }
  const clip = body.media === "clip";
  if (clip) video.src = URL.createObjectURL(file);  // drawn from when a frame is picked
  analysis.current = { id: body.id, channel: body.channel, bitmap, clip, events: new Map(),
                       findings: [], frames: [], shown: -1, outcome: null,
                       width: (body.upload && body.upload.width) || 320,
                       height: (body.upload && body.upload.height) || 240 };
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
  } else if (event.type === "token" && current.clip) {
    current.frames.push(p.data);
    const slider = document.getElementById("analyze-frame");
    const following = current.shown === current.frames.length - 2;  // on the latest
    slider.max = String(current.frames.length - 1);
    slider.hidden = false;
    if (following || current.shown < 0) showFrame(current, current.frames.length - 1);
    const li = document.createElement("li");
    li.textContent = p.text;
    document.getElementById("analyze-findings").append(li);
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
    if (event.type === "complete" && current.clip) {
      const s = p.summary;
      const tracks = p.result.tracks.map((t) => `#${t.track_id} ${t.label}`).join(", ");
      summary.textContent = `${s.total_tokens} frames in ${Math.round(s.total_ms)} ms, ` +
        `${p.result.tracks.length} tracks (${tracks || "none"})`;
    } else if (event.type === "complete") {
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

function showFrame(current, index) {
  // Seek the clip to the frame's time; it is drawn once the video has that frame.
  current.shown = index;
  document.getElementById("analyze-frame").value = String(index);
  const video = document.getElementById("analyze-video");
  const frame = current.frames[index];
  if (video.src && video.readyState >= 1 && !video.error) {
    video.currentTime = frame.t_ms / 1000;
  }
  analysis.dirty = true;
}

function drawClip(current, canvas) {
  const video = document.getElementById("analyze-video");
  const playable = video.src && video.readyState >= 2 && !video.error && video.videoWidth;
  canvas.width = playable ? video.videoWidth : current.width;
  canvas.height = playable ? video.videoHeight : current.height;
  const ctx = canvas.getContext("2d");
  if (playable) ctx.drawImage(video, 0, 0);
  else { ctx.fillStyle = "#222"; ctx.fillRect(0, 0, canvas.width, canvas.height); }
  const frame = current.frames[current.shown];
  const findings = frame ? frame.findings : [];
  ctx.lineWidth = Math.max(2, canvas.width / 320);
  ctx.font = `${Math.max(12, canvas.width / 50)}px system-ui`;
  findings.forEach((f) => {  // one colour per track
    const [x1, y1, x2, y2] = f.box;
    ctx.strokeStyle = ctx.fillStyle = COLORS[f.track_id % COLORS.length];
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.fillText(`#${f.track_id} ${f.label}`, x1 + 2, Math.max(12, y1 - 4));
  });
  if (frame) {
    ctx.fillStyle = "#fff";
    ctx.fillText(`frame ${frame.frame} at ${(frame.t_ms / 1000).toFixed(2)} s`, 8, canvas.height - 8);
  }
  canvas.dataset.boxes = String(findings.length);
  canvas.dataset.frame = String(current.shown);
  canvas.dataset.frames = String(current.frames.length);
}

function drawAnalysis() {
  const current = analysis.current;
  const canvas = document.getElementById("analyze-canvas");
  if (current && current.clip) { drawClip(current, canvas); return; }
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
document.getElementById("analyze-frame").addEventListener("input", (event) => {
  if (analysis.current && analysis.current.clip) showFrame(analysis.current, Number(event.target.value));
});
const clipVideo = document.getElementById("analyze-video");
for (const name of ["seeked", "loadeddata"]) {
  clipVideo.addEventListener(name, () => {
    const current = analysis.current;
    if (name === "loadeddata" && current && current.shown >= 0) showFrame(current, current.shown);
    analysis.dirty = true;
  });
}
const drop = document.getElementById("analyze-drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  submitAnalysis(event.dataTransfer.files[0]);
});
