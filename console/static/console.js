// The console page. Text from the service (image IDs, messages) is only ever set with textContent, never parsed
// as HTML; every call that changes state carries the X-VSearch-Console header the server requires.
"use strict";

const $ = (id) => document.getElementById(id);
const HEADERS = { "X-VSearch-Console": "1" };
const state = { image: null, crop: null, drag: null, uploadedAt: null };
window.vsearchTimings = [];  // [{kind, ms}]: upload (or click) to results drawn, read by the browser tests
window.vsearchErrors = [];  // [{code, message}] shown, in order

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showError(code, message) {
  window.vsearchErrors.push({ code, message });
  $("error-code").textContent = code;
  $("error-message").textContent = message;
  $("error").hidden = false;
}

async function call(url, options = {}) {
  let response;
  try {
    response = await fetch(url, { credentials: "same-origin", ...options, headers: { ...HEADERS, ...(options.headers || {}) } });
  } catch (e) {
    throw { code: "UNAVAILABLE", message: "the console did not answer: " + e };
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : null;
  if (!response.ok) throw body && body.code ? body : { code: "HTTP " + response.status, message: response.statusText };
  return body;
}

function params() {
  const p = new URLSearchParams();
  p.set("k", $("k").value || "0");
  p.set("include_duplicates", $("dups").checked ? "true" : "false");
  if ($("min-score").value !== "") p.set("min_score", $("min-score").value);
  if ($("min-relevance").value !== "") p.set("min_relevance", $("min-relevance").value);
  return p;
}

function render(answer, started, kind) {
  $("error").hidden = true;
  $("meta").textContent = `${answer.results.length} results · model ${answer.model_version} · index version ` +
    `${answer.index_version} · request ${answer.request_id} · ${Math.round(performance.now() - started)} ms`;
  const grid = $("results");
  grid.replaceChildren();
  for (const r of answer.results) {
    const card = el("div", "result");
    card.dataset.imageId = r.image_id;
    card.title = "more like this";
    const img = el("img");
    img.alt = r.image_id;
    img.loading = "lazy";
    img.src = "/api/thumbnail?" + new URLSearchParams({ id: r.image_id, side: "192" });
    card.append(img, el("div", "id", r.image_id), el("div", "score", `#${r.position} · score ${r.score.toFixed(3)}` +
      (r.relevance === null ? "" : ` · relevance ${r.relevance.toFixed(2)}`)));
    if (r.duplicate_of !== null) {
      card.classList.add("duplicate");
      card.append(el("div", "dup", "duplicate of " + r.duplicate_of));
    }
    card.addEventListener("click", () => similar(r.image_id));
    grid.append(card);
  }
  window.vsearchTimings.push({ kind, ms: performance.now() - started, results: answer.results.length });
}

async function search() {
  if (!state.image) return;
  const started = state.uploadedAt ?? performance.now();
  state.uploadedAt = null;
  const p = params();
  if (state.crop) for (const [k, v] of Object.entries(state.crop)) p.set(k, v.toFixed(4));
  try {
    const answer = await call("/api/search?" + p, { method: "POST", body: state.image,
      headers: { "Content-Type": "application/octet-stream" } });
    render(answer, started, "search");
  } catch (e) { showError(e.code, e.message); }
}

async function similar(imageId) {
  const started = performance.now();
  const p = params();
  p.set("image_id", imageId);
  try {
    render(await call("/api/similar?" + p, { method: "POST" }), started, "similar");
    $("meta").prepend(document.createTextNode(`more like ${imageId} · `));
  } catch (e) { showError(e.code, e.message); }
}

function load(file) {
  if (!file) return;
  $("error").hidden = true;
  state.uploadedAt = performance.now();
  state.crop = null;
  $("box").hidden = true;
  $("crop-text").textContent = "";
  const reader = new FileReader();
  reader.onload = () => {
    state.image = reader.result;
    $("preview").src = URL.createObjectURL(file);
    $("stage").hidden = false;
    $("search-btn").disabled = false;
    search();
  };
  reader.readAsArrayBuffer(file);
}

function point(event) {
  const r = $("preview").getBoundingClientRect();
  return { x: Math.min(Math.max((event.clientX - r.left) / r.width, 0), 1),
           y: Math.min(Math.max((event.clientY - r.top) / r.height, 0), 1) };
}

function drawBox(a, b) {
  const r = $("preview").getBoundingClientRect(), box = $("box");
  box.style.left = Math.min(a.x, b.x) * r.width + "px";
  box.style.top = Math.min(a.y, b.y) * r.height + "px";
  box.style.width = Math.abs(a.x - b.x) * r.width + "px";
  box.style.height = Math.abs(a.y - b.y) * r.height + "px";
  box.hidden = false;
}

function setupCrop() {
  const stage = $("stage");
  stage.addEventListener("mousedown", (e) => { e.preventDefault(); state.drag = point(e); });
  window.addEventListener("mousemove", (e) => { if (state.drag) drawBox(state.drag, point(e)); });
  window.addEventListener("mouseup", (e) => {
    if (!state.drag) return;
    const a = state.drag, b = point(e);
    state.drag = null;
    const box = { x_min: Math.min(a.x, b.x), y_min: Math.min(a.y, b.y), x_max: Math.max(a.x, b.x), y_max: Math.max(a.y, b.y) };
    if ((box.x_max - box.x_min) * (box.y_max - box.y_min) < 0.0025) {  // a click: the whole image again
      state.crop = null;
      $("box").hidden = true;
      $("crop-text").textContent = "";
    } else {
      state.crop = box;
      $("crop-text").textContent = "crop " + Object.values(box).map((v) => v.toFixed(2)).join(", ");
    }
    search();
  });
}

function setupUpload() {
  $("file").addEventListener("change", () => { load($("file").files[0]); $("file").value = ""; });  // re-pickable
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); load(e.dataTransfer.files[0]); });
  $("search-btn").addEventListener("click", search);
}

async function refreshService() {
  try {
    const s = await call("/api/service");
    const rows = [["images", s.image_count], ["public", s.public_count], ["index", s.index_type],
      ["index params", Object.entries(s.index_params).map(([k, v]) => `${k}=${v}`).join(" ")],
      ["model", s.model_version], ["index version", s.index_version], ["index on GPU", s.index_on_gpu],
      ["admission", `${s.admission.state}` + (s.admission.in_flight === null ? "" : ` · ${s.admission.in_flight} in flight`)]];
    if (s.switching_to_model_version) rows.push(["switching to", `${s.switching_to_model_version}: ` +
      `${s.switch_reembedded_count} / ${s.switch_total_count}`]);
    if (s.switch_error) rows.push(["last switch error", s.switch_error]);
    $("service").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", "", k), el("dd", "", String(v))]));
  } catch (e) { $("service").replaceChildren(el("dt", "", e.code), el("dd", "", e.message)); }
}

function drawSlo(series) {
  const canvas = $("slo"), g = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  g.clearRect(0, 0, w, h);
  const keys = [["p50_ms", "#2e7d32"], ["p95_ms", "#f9a825"], ["p99_ms", "#c62828"]];
  const values = series.flatMap((p) => keys.map(([k]) => p[k]).filter((v) => v !== null));
  const top = Math.max(10, ...values) * 1.1;
  g.font = "10px sans-serif";
  g.fillStyle = "#5f6b76";
  g.fillText(`${top.toFixed(0)} ms`, 2, 10);
  if (series.length < 2) { g.fillText("waiting for traffic…", w / 2 - 40, h / 2); return; }
  const t0 = series[0].t, span = Math.max(series[series.length - 1].t - t0, 1);
  keys.forEach(([k, color], i) => {
    g.strokeStyle = color;
    g.beginPath();
    let started = false;
    for (const p of series) {
      if (p[k] === null) continue;
      const x = ((p.t - t0) / span) * (w - 4) + 2, y = h - 2 - (p[k] / top) * (h - 14);
      if (started) g.lineTo(x, y); else { g.moveTo(x, y); started = true; }
    }
    g.stroke();
    g.fillStyle = color;
    g.fillText(k.replace("_ms", ""), w - 80 + i * 26, 10);
  });
}

async function refreshSlo() {
  try {
    const slo = await call("/api/slo");
    $("slo-source").textContent = slo.source ? `from ${slo.source}` : "";
    drawSlo(slo.series);
    const last = slo.series[slo.series.length - 1];
    const fmt = (v) => (v === null || v === undefined ? "–" : v);
    $("slo-now").textContent = slo.error ? slo.error : last ?
      `last ${slo.window_s}s: p50 ${fmt(last.p50_ms)} · p95 ${fmt(last.p95_ms)} · p99 ${fmt(last.p99_ms)} ms · ` +
      `${fmt(last.qps)} QPS · shed ${fmt(last.shed_per_s)}/s · errors ${fmt(last.errors_per_s)}/s` : "no data yet";
    $("slo").dataset.p99 = last && last.p99_ms !== null ? String(last.p99_ms) : "";
  } catch (e) { $("slo-now").textContent = `${e.code}: ${e.message}`; }
}

async function setupSession() {
  const s = await call("/api/session");
  $("who").textContent = s.mode === "insecure-local" ? "insecure-local (loopback demo)" :
    s.signed_in ? `signed in as ${s.subject ?? "?"}` : "";
  $("signin").hidden = s.signed_in;
  $("signout").hidden = !(s.signed_in && s.mode !== "insecure-local");
  $("signin").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await call("/api/session", { method: "POST", body: JSON.stringify({ token: $("token").value }),
        headers: { "Content-Type": "application/json" } });
      location.reload();
    } catch (err) { showError(err.code, err.message); }
  });
  $("signout").addEventListener("click", async () => { await call("/api/session", { method: "DELETE" }); location.reload(); });
  return s.signed_in;
}

window.addEventListener("DOMContentLoaded", async () => {
  setupUpload();
  setupCrop();
  if (!(await setupSession())) return;
  refreshService();
  refreshSlo();
  setInterval(refreshService, 5000);
  setInterval(refreshSlo, 3000);
});
