// The segpipe page: pick, drop or paste an image; POST it to /predict/details; show the mask over it.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, file: null, stem: "image", photoShown: false, result: null, busy: false, tileChosen: false };

async function loadModel() {
  try {
    const response = await fetch("/health");
    state.model = await response.json();
    const names = state.model.classes.map((c) => c.name).join(", ");
    $("model-info").textContent =
      `${state.model.model} · ${state.model.classes.length} classes (${names}) · ${state.model.image_size} px input`;
    $("tile-help").textContent = state.model.tiles_by_default
      ? `(${state.model.tile} px windows at the scale the model learnt; on by default, as predict does)`
      : `(${state.model.tile} px windows at the image's own scale; off by default: this model learnt from whole images)`;
  } catch (error) {
    showStatus(`The server did not answer: ${error}`, "error");
  }
}

function showStatus(text, kind = "") {
  $("status").textContent = text;
  $("status").className = kind;
}

function stemOf(name) {
  const base = (name || "image").split(/[\\/]/).pop();
  const dot = base.lastIndexOf(".");
  return dot > 0 ? base.slice(0, dot) : base;
}

// A new image: show it, set the tiling to the default the server gave, predict.
async function chooseFile(file) {
  if (!file) return;
  if (state.model && file.size > state.model.max_upload_bytes) {
    const limit = (state.model.max_upload_bytes / 2 ** 20).toFixed(0);
    showStatus(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MiB; the server accepts up to ${limit} MiB.`, "error");
    return;
  }
  state.file = file;
  state.stem = stemOf(file.name);
  state.result = null;
  $("result-panel").hidden = true;
  $("layer").hidden = true;
  $("stage").dataset.state = "loading";
  await showPhoto(file);
  // The server says what "auto" means for this model (GET /health: tiles_by_default); the page
  // never decides it, so its mask is the one `predict` writes.
  if (state.model && !state.tileChosen) $("tile").checked = state.model.tiles_by_default;  // a box the user set stays
  await predict();
}

// Resolves to the image's size, or null when the browser cannot show the format (TIFF).
function showPhoto(file) {
  const photo = $("photo");
  if (photo.src) URL.revokeObjectURL(photo.src);
  return new Promise((resolve) => {
    photo.onload = () => {
      state.photoShown = true;
      photo.hidden = false;
      $("placeholder").hidden = true;
      $("stage").classList.remove("no-photo");
      resolve({ width: photo.naturalWidth, height: photo.naturalHeight });
    };
    photo.onerror = () => {
      state.photoShown = false;
      photo.hidden = true;
      $("placeholder").hidden = true;
      $("stage").classList.add("no-photo");
      resolve(null);
    };
    photo.src = URL.createObjectURL(file);
  });
}

async function predict() {
  if (!state.file || state.busy) return;
  state.busy = true;
  showStatus(`Predicting ${state.file.name}…`, "busy");
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  form.append("tile", $("tile").checked ? "on" : "off");
  form.append("tta", $("tta").checked ? "true" : "false");
  const started = performance.now();
  try {
    const response = await fetch("/predict/details", { method: "POST", body: form });
    const body = await response.json().catch(() => ({ detail: `HTTP ${response.status}` }));
    if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
    state.result = body;
    await showResult(body, (performance.now() - started) / 1000);
    showStatus("");
  } catch (error) {
    $("stage").dataset.state = "error";
    showStatus(String(error.message || error), "error");
  } finally {
    state.busy = false;
  }
}

async function showResult(result, seconds) {
  const layer = $("layer");
  await new Promise((resolve, reject) => {
    layer.onload = resolve;
    layer.onerror = () => reject(new Error("the server's mask could not be shown"));
    layer.src = `data:image/png;base64,${result.layer_png}`;
  });
  layer.hidden = false;
  setOpacity();
  fillLegend(result.shares);
  const how = result.tiled ? `tiled in ${state.model.tile} px windows` : "whole image";
  $("timing").textContent =
    `${result.width} × ${result.height} px, ${how}${$("tta").checked ? ", TTA" : ""}: ` +
    `${seconds.toFixed(2)} s (model ${result.seconds.toFixed(2)} s)`;
  $("result-panel").hidden = false;
  $("stage").dataset.state = "done";
}

function fillLegend(shares) {
  const body = $("legend").querySelector("tbody");
  body.replaceChildren();
  state.model.classes.forEach((cls, index) => {
    const row = document.createElement("tr");
    const name = document.createElement("td");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = index === 0 ? "transparent" : cls.colour;
    name.append(swatch, cls.name + (index === 0 ? " (not coloured)" : ""));
    const share = document.createElement("td");
    share.textContent = `${(100 * shares[index]).toFixed(1)}%`;
    row.append(name, share);
    body.append(row);
  });
}

function setOpacity() {
  const value = Number($("opacity").value);
  $("layer").style.opacity = String(value / 100);
  $("opacity-value").textContent = `${value}%`;
}

function download(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function base64Blob(data, type) {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

// The overlay at the chosen opacity, at the image's own size: the image, then the colour layer.
function downloadOverlay() {
  const { width, height } = state.result;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  if (state.photoShown) context.drawImage($("photo"), 0, 0, width, height);
  context.globalAlpha = Number($("opacity").value) / 100;
  context.imageSmoothingEnabled = false;
  context.drawImage($("layer"), 0, 0, width, height);
  canvas.toBlob((blob) => download(blob, `${state.stem}_overlay.png`), "image/png");
}

function wireEvents() {
  $("file").addEventListener("change", (event) => chooseFile(event.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    chooseFile(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = [...event.clipboardData.items].find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (!item) return;
    const blob = item.getAsFile();
    chooseFile(new File([blob], `pasted.${blob.type.split("/")[1] || "png"}`, { type: blob.type }));
  });
  $("opacity").addEventListener("input", setOpacity);
  $("tile").addEventListener("change", () => { state.tileChosen = true; predict(); });
  $("tta").addEventListener("change", predict);
  $("download-mask").addEventListener("click", () =>
    download(base64Blob(state.result.mask_png, "image/png"), `${state.stem}.png`));
  $("download-overlay").addEventListener("click", downloadOverlay);
}

wireEvents();
loadModel();
