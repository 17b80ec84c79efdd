// The pansight page: pick an image, run a model through /api/predict, draw the result.
"use strict";

const RUNGS = ["classify", "localize", "detect", "semantic", "instance", "panoptic"];
const MASK_ALPHA = 0.5; // as pansight.viz draws masks and class maps
const IGNORE_LABEL = 255;
const VIEW_SIDE = 384; // short side of the main view, in screen pixels
const CARD_SIDE = 256; // short side of a ladder card

const page = { models: [], palette: [[0, 0, 0]], minScore: 0.3, image: null, blob: null };
const $ = (id) => document.getElementById(id);

// ---------- colors (pansight.viz's palette, sent by /api/models) ----------

function color(index) {
  return page.palette[index % page.palette.length];
}

function shade(rgb, index) {
  // The index-th shade of a class color for the things of a panoptic map, as viz draws them.
  if (index === 0) return rgb;
  const step = Math.min(0.25 * Math.floor((index + 1) / 2), 0.75);
  const target = index % 2 ? 255 : 0;
  return rgb.map((c) => Math.round(c + (target - c) * step));
}

const css = (rgb) => `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;

// ---------- decoding the API's masks and maps ----------

function rleCounts(text) {
  // COCO compressed RLE string -> run lengths (alternately 0s and 1s, column-major).
  const counts = [];
  let position = 0;
  while (position < text.length) {
    let value = 0, shift = 0, more = true;
    while (more) {
      const code = text.charCodeAt(position++) - 48;
      value |= (code & 0x1f) << shift;
      more = (code & 0x20) !== 0;
      shift += 5;
      if (!more && (code & 0x10)) value |= -1 << shift;
    }
    if (counts.length > 2) value += counts[counts.length - 2];
    counts.push(value);
  }
  return counts;
}

function decodeMask(rle) {
  // {size: [h, w], counts} -> Uint8Array of h*w in row-major order (1 = inside).
  const [height, width] = rle.size;
  const mask = new Uint8Array(height * width);
  let index = 0, inside = false;
  for (const run of rleCounts(rle.counts)) {
    if (inside) {
      for (let k = index; k < index + run; k++) {
        mask[(k % height) * width + Math.floor(k / height)] = 1;
      }
    }
    index += run;
    inside = !inside;
  }
  return mask;
}

async function decodeMap(dataUrl) {
  // A PNG data URL holding R + 256 G + 65536 B per pixel -> {width, height, values}.
  const image = await loadImage(dataUrl);
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(image, 0, 0);
  const rgba = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const values = new Uint32Array(canvas.width * canvas.height);
  for (let i = 0; i < values.length; i++) {
    values[i] = rgba[4 * i] + 256 * rgba[4 * i + 1] + 65536 * rgba[4 * i + 2];
  }
  return { width: canvas.width, height: canvas.height, values };
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot display this image"));
    image.src = url;
  });
}

// ---------- drawing ----------

function newOverlay(width, height) {
  return new ImageData(width, height);
}

function paint(overlay, pixelIndex, rgb) {
  const data = overlay.data;
  data[4 * pixelIndex] = rgb[0];
  data[4 * pixelIndex + 1] = rgb[1];
  data[4 * pixelIndex + 2] = rgb[2];
  data[4 * pixelIndex + 3] = 255;
}

function blendOverlay(context, overlay, scale) {
  const layer = document.createElement("canvas");
  layer.width = overlay.width;
  layer.height = overlay.height;
  layer.getContext("2d").putImageData(overlay, 0, 0);
  context.save();
  context.globalAlpha = MASK_ALPHA;
  context.drawImage(layer, 0, 0, overlay.width * scale, overlay.height * scale);
  context.restore();
}

function drawBox(context, box, rgb, caption, scale) {
  const [x1, y1, x2, y2] = box.map((v) => v * scale);
  context.strokeStyle = css(rgb);
  context.lineWidth = Math.max(2, scale);
  context.strokeRect(x1, y1, x2 - x1, y2 - y1);
  drawCaption(context, x1, y1, caption, rgb);
}

function drawCaption(context, x, y, text, rgb) {
  context.font = "13px system-ui, sans-serif";
  const width = context.measureText(text).width + 6, height = 17;
  const left = Math.min(Math.max(0, x), context.canvas.width - width);
  const top = y >= height ? y - height : Math.min(Math.max(0, y), context.canvas.height - height);
  context.fillStyle = css(rgb);
  context.fillRect(left, top, width, height);
  const light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140;
  context.fillStyle = light ? "black" : "white";
  context.fillText(text, left + 3, top + 13);
}

function legendItems(labels, classNames) {
  return labels.map((label) => ({ label, name: classNames[label] ?? `class ${label}` }));
}

async function render(canvas, response, minScore, shortSide) {
  // Draw the image and the result; return {count, kind, maskPixels, legend, summary}.
  const { width, height } = response;
  const scale = Math.max(1, Math.ceil(shortSide / Math.min(width, height)));
  canvas.width = width * scale;
  canvas.height = height * scale;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.drawImage(page.image, 0, 0, canvas.width, canvas.height);
  const result = response.result;
  const classNames = page.models.find((m) => m.name === response.model)?.class_names ?? [];
  const draw = DRAWERS[result.kind];
  return draw(context, result, { width, height, scale, minScore, classNames });
}

const DRAWERS = {
  classification(context, result) {
    drawCaption(context, 0, 0, `${result.class_name} ${result.score.toFixed(2)}`,
      color(result.label));
    const summary = result.top.map((t) => `${t.class_name} ${t.score.toFixed(2)}`).join(", ");
    return { count: 1, noun: "class", legend: [], summary };
  },

  localization(context, result, view) {
    const caption = `${result.class_name} ${result.score.toFixed(2)}`;
    drawBox(context, result.box, color(result.label), caption, view.scale);
    return { count: 1, noun: "box", legend: [], summary: caption };
  },

  detections(context, result, view) {
    const shown = result.detections.filter((d) => d.score >= view.minScore);
    const overlay = newOverlay(view.width, view.height);
    let maskPixels = 0;
    shown.forEach((detection, index) => {
      if (!detection.mask) return;
      const mask = decodeMask(detection.mask);
      for (let p = 0; p < mask.length; p++) {
        if (mask[p]) { paint(overlay, p, color(index)); maskPixels++; }
      }
    });
    blendOverlay(context, overlay, view.scale);
    shown.forEach((detection, index) => {
      const caption = `${detection.class_name} ${detection.score.toFixed(2)}`;
      drawBox(context, detection.box, color(index), caption, view.scale);
    });
    const hidden = result.detections.length - shown.length;
    const summary = hidden ? `${hidden} more below the minimum score` : "";
    return { count: shown.length, noun: "detection", maskPixels, legend: [], summary };
  },

  async semantic(context, result, view) {
    const map = await decodeMap(result.labels_png);
    const overlay = newOverlay(map.width, map.height);
    for (let p = 0; p < map.values.length; p++) {
      const label = map.values[p];
      paint(overlay, p, label === IGNORE_LABEL ? [0, 0, 0] : color(label));
    }
    blendOverlay(context, overlay, view.scale);
    const labels = result.classes.map((c) => c.label).filter((l) => l !== IGNORE_LABEL);
    return { count: labels.length, noun: "class", legend: legendItems(labels, view.classNames) };
  },

  async panoptic(context, result, view) {
    const map = await decodeMap(result.ids_png);
    const colors = new Map(), shades = new Map();
    for (const segment of result.segments) {
      let rgb = color(segment.label);
      if (segment.is_thing) {
        const index = shades.get(segment.label) ?? 0;
        shades.set(segment.label, index + 1);
        rgb = shade(rgb, index);
      }
      colors.set(segment.id, rgb);
    }
    const overlay = newOverlay(map.width, map.height);
    for (let p = 0; p < map.values.length; p++) {
      paint(overlay, p, colors.get(map.values[p]) ?? [0, 0, 0]);
    }
    blendOverlay(context, overlay, view.scale);
    const labels = [...new Set(result.segments.map((s) => s.label))].sort((a, b) => a - b);
    return {
      count: result.segments.length, noun: "segment",
      legend: legendItems(labels, view.classNames),
    };
  },
};

function fillLegend(list, items) {
  list.replaceChildren(...items.map(({ label, name }) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = css(color(label));
    item.append(swatch, name);
    return item;
  }));
}

function fillTimings(table, timing, roundTrip) {
  const rows = [...Object.entries(timing), ["round trip", roundTrip]];
  table.replaceChildren(...rows.map(([name, ms]) => {
    const row = document.createElement("tr");
    const label = document.createElement("td");
    const value = document.createElement("td");
    label.textContent = name;
    value.className = "ms";
    value.textContent = `${ms.toFixed(1)} ms`;
    row.append(label, value);
    return row;
  }));
}

function describe(drawn) {
  const plural = drawn.count === 1 ? "" : drawn.noun === "class" ? "es" : "s";
  return `${drawn.count} ${drawn.noun}${plural}${drawn.summary ? ` (${drawn.summary})` : ""}`;
}

// ---------- talking to the server ----------

async function api(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    throw new Error(`cannot reach the server: ${error.message}`);
  }
  const type = response.headers.get("content-type") ?? "";
  if (!response.ok) {
    const body = type.includes("json") ? await response.json() : { error: await response.text() };
    throw new Error(`${response.status}: ${body.error}`);
  }
  return response;
}

async function predict(modelName) {
  const started = performance.now();
  const response = await api(`/api/predict?model=${encodeURIComponent(modelName)}`, {
    method: "POST",
    headers: { "Content-Type": page.blob.type || "application/octet-stream" },
    body: page.blob,
  });
  const payload = await response.json();
  payload.roundTrip = performance.now() - started;
  return payload;
}

// ---------- the page ----------

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(text, state) {
  $("status").textContent = text;
  document.body.dataset.state = state;
}

async function guarded(action) {
  showError("");
  try {
    await action();
  } catch (error) {
    showError(error.message);
    setStatus("Failed.", "error");
  }
}

async function useImage(blob, name) {
  const url = URL.createObjectURL(blob);
  try {
    page.image = await loadImage(url);
  } catch (error) {
    URL.revokeObjectURL(url);
    throw new Error(`${name}: ${error.message}`);
  }
  page.blob = blob;
  page.last = null;
  const canvas = $("view");
  const scale = Math.max(1, Math.ceil(VIEW_SIDE / Math.min(page.image.width, page.image.height)));
  canvas.width = page.image.width * scale;
  canvas.height = page.image.height * scale;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.drawImage(page.image, 0, 0, canvas.width, canvas.height);
  $("count").textContent = "";
  $("count").dataset.count = "-1";
  $("ladder").hidden = true;
  $("run").disabled = $("ladder-button").disabled = page.models.length === 0;
  setStatus(`Image: ${name} (${page.image.width}x${page.image.height}).`, "image");
}

async function showSingle(payload) {
  const drawn = await render($("view"), payload, page.minScore, VIEW_SIDE);
  $("count").textContent = describe(drawn);
  $("count").dataset.count = String(drawn.count);
  $("count").dataset.maskPixels = String(drawn.maskPixels ?? 0);
  fillTimings($("timings"), payload.timing_ms, payload.roundTrip);
  fillLegend($("legend"), drawn.legend);
}

async function runSelected() {
  const name = $("model").value;
  setStatus(`Running ${name}...`, "running");
  page.last = await predict(name);
  $("ladder").hidden = true;
  $("single").hidden = false;
  await showSingle(page.last);
  setStatus(`${name} (${page.last.task}) done.`, "done");
}

async function runLadder() {
  const ladder = $("ladder");
  ladder.replaceChildren();
  ladder.hidden = false;
  $("single").hidden = true;
  page.ladder = [];
  for (const model of page.models) {
    setStatus(`Ladder: running ${model.name}...`, "running");
    const card = document.createElement("article");
    card.className = "card";
    const title = document.createElement("h2");
    title.textContent = `${model.task}: ${model.name}`;
    card.append(title);
    ladder.append(card);
    try {
      const payload = await predict(model.name);
      page.ladder.push({ card, payload });
      await fillCard(card, payload);
    } catch (error) {
      const message = document.createElement("p");
      message.className = "error";
      message.textContent = error.message;
      card.append(message);
    }
  }
  setStatus(`Ladder of ${page.models.length} models done.`, "done");
}

async function fillCard(card, payload) {
  card.replaceChildren(card.firstChild);
  const canvas = document.createElement("canvas");
  const count = document.createElement("p");
  const timings = document.createElement("table");
  const legend = document.createElement("ul");
  count.className = "count";
  legend.className = "legend";
  card.append(canvas, count, legend, timings);
  const drawn = await render(canvas, payload, page.minScore, CARD_SIDE);
  count.textContent = describe(drawn);
  count.dataset.count = String(drawn.count);
  fillLegend(legend, drawn.legend);
  fillTimings(timings, payload.timing_ms, payload.roundTrip);
}

async function redraw() {
  if (page.last && !$("single").hidden) await showSingle(page.last);
  if (page.ladder && !$("ladder").hidden) {
    for (const { card, payload } of page.ladder) await fillCard(card, payload);
  }
}

async function loadSample() {
  const index = $("sample-index").value || "0";
  const response = await api(`/api/sample?index=${encodeURIComponent(index)}`);
  await useImage(await response.blob(), `synthetic sample ${index}`);
}

async function start() {
  const params = new URLSearchParams(window.location.search);
  const response = await (await api("/api/models")).json();
  page.palette = response.palette;
  page.models = response.models.slice().sort(
    (a, b) => RUNGS.indexOf(a.task) - RUNGS.indexOf(b.task));
  const requested = Number.parseFloat(params.get("min_score") ?? "");
  page.minScore = Number.isFinite(requested) ? requested : response.draw_min_score;
  $("min-score").value = String(page.minScore);
  $("min-score-value").textContent = page.minScore.toFixed(2);
  $("model").replaceChildren(...page.models.map((model) => {
    const option = document.createElement("option");
    option.value = model.name;
    option.textContent = `${model.name} (${model.task})`;
    return option;
  }));
  if (params.get("model")) $("model").value = params.get("model");
  setStatus(`${page.models.length} model(s) loaded. Pick an image.`, "ready");
}

function wire() {
  $("sample-button").addEventListener("click", () => guarded(loadSample));
  $("run").addEventListener("click", () => guarded(runSelected));
  $("ladder-button").addEventListener("click", () => guarded(runLadder));
  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (file) guarded(() => useImage(file, file.name));
  });
  $("min-score").addEventListener("input", () => {
    page.minScore = Number.parseFloat($("min-score").value);
    $("min-score-value").textContent = page.minScore.toFixed(2);
    guarded(redraw);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) guarded(() => useImage(file, file.name));
  });
}

wire();
guarded(start);
