// The page of `python -m keypatch_jax.serve`: boxes on a canvas, patches, results.
// Boxes are [x, y, w, h] in pixels of the server's detection frame; the canvas shows that frame scaled.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"];
const VIEW = 384; // longest canvas side, CSS pixels
const HANDLE = 8; // corner handle size, CSS pixels

const state = {
  info: null,
  imageId: null,
  frame: null, // HTMLImageElement of the detection frame
  width: 0,
  height: 0,
  detected: [],
  boxes: [],
  selected: -1,
  extras: [], // [{id, thumb}]
  seed: 0,
  drag: null,
};

function say(text, isError = false) {
  const m = $("message");
  m.textContent = String(text).replace(/\s+/g, " ").trim();
  m.className = "message" + (isError ? " error" : "");
}

async function api(path, options) {
  let res;
  try {
    res = await fetch(path, options);
  } catch (e) {
    throw new Error(`the server does not answer (${e.message})`);
  }
  let body = null;
  try {
    body = await res.json();
  } catch (e) {
    body = null;
  }
  if (!res.ok) throw new Error(body && body.error ? body.error : `HTTP ${res.status} from ${path}`);
  return body;
}

function numPatches() {
  const n = parseInt($("num-patches").value, 10);
  return Number.isFinite(n) && n > 0 ? n : 0;
}

function usedBoxes() {
  return state.boxes.slice(0, numPatches());
}

// --- canvas ----------------------------------------------------------------------

function scale() {
  return state.width ? VIEW / Math.max(state.width, state.height) : 1;
}

function draw() {
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const s = scale();
  if (state.frame) {
    canvas.width = Math.round(state.width * s);
    canvas.height = Math.round(state.height * s);
  }
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.frame) return;
  ctx.imageSmoothingEnabled = s < 2;
  ctx.drawImage(state.frame, 0, 0, canvas.width, canvas.height);
  const used = numPatches();
  state.boxes.forEach(([x, y, w, h], i) => {
    const color = COLORS[i % COLORS.length];
    ctx.setLineDash(i < used ? [] : [6, 4]);
    ctx.lineWidth = i === state.selected ? 4 : 2;
    ctx.strokeStyle = i < used ? color : "#999";
    ctx.strokeRect(x * s, y * s, w * s, h * s);
    ctx.setLineDash([]);
    ctx.fillStyle = i < used ? color : "#999";
    ctx.fillRect((x + w) * s - HANDLE, (y + h) * s - HANDLE, HANDLE, HANDLE);
    ctx.font = "bold 14px sans-serif";
    ctx.fillText(String(i + 1), x * s + 4, y * s + 16);
  });
  canvas.dataset.boxes = JSON.stringify(state.boxes);
  canvas.dataset.used = String(Math.min(used, state.boxes.length));
}

function toFrame(event) {
  const canvas = $("canvas");
  const rect = canvas.getBoundingClientRect();
  const s = scale();
  return [(event.clientX - rect.left - canvas.clientLeft) / s, (event.clientY - rect.top - canvas.clientTop) / s];
}

function clampBox([x, y, w, h]) {
  w = Math.max(1, Math.min(w, state.width));
  h = Math.max(1, Math.min(h, state.height));
  x = Math.max(0, Math.min(x, state.width - w));
  y = Math.max(0, Math.min(y, state.height - h));
  return [x, y, w, h];
}

// A corner handle under the pointer, else the smallest box under it, else null.
function hit([px, py]) {
  const tol = HANDLE / scale();
  let best = null;
  state.boxes.forEach(([x, y, w, h], i) => {
    if (best && best.mode === "resize") return;
    if (Math.abs(px - (x + w)) <= tol && Math.abs(py - (y + h)) <= tol) best = { mode: "resize", i };
    else if (px >= x && px <= x + w && py >= y && py <= y + h && (!best || w * h < best.area)) {
      best = { mode: "move", i, dx: px - x, dy: py - y, area: w * h };
    }
  });
  return best;
}

function onDown(event) {
  if (!state.frame) return;
  const p = toFrame(event);
  const found = hit(p);
  if (found) {
    state.drag = found;
    state.selected = found.i;
  } else {
    const i = state.selected >= 0 ? state.selected : state.boxes.length;
    state.drag = { mode: "draw", i, start: p };
  }
  $("canvas").setPointerCapture(event.pointerId);
  draw();
}

function onMove(event) {
  const d = state.drag;
  if (!d) return;
  const [px, py] = toFrame(event);
  if (d.mode === "move") {
    const [, , w, h] = state.boxes[d.i];
    state.boxes[d.i] = clampBox([px - d.dx, py - d.dy, w, h]);
  } else if (d.mode === "resize") {
    const [x, y] = state.boxes[d.i];
    state.boxes[d.i] = clampBox([x, y, Math.min(px, state.width) - x, Math.min(py, state.height) - y]);
  } else {
    const [sx, sy] = d.start;
    if (Math.abs(px - sx) * scale() < 3 && Math.abs(py - sy) * scale() < 3) return;
    const x0 = Math.max(0, Math.min(sx, px));
    const y0 = Math.max(0, Math.min(sy, py));
    const x1 = Math.min(state.width, Math.max(sx, px));
    const y1 = Math.min(state.height, Math.max(sy, py));
    state.boxes[d.i] = clampBox([x0, y0, x1 - x0, y1 - y0]);
    state.selected = d.i;
    if (d.i >= numPatches()) $("num-patches").value = String(Math.min(d.i + 1, maxBoxes()));
  }
  draw();
}

function onUp() {
  state.drag = null;
  draw();
}

function maxBoxes() {
  return state.info ? state.info.max_patches : 8;
}

function onKey(event) {
  if ((event.key === "Delete" || event.key === "Backspace") && state.selected >= 0) {
    state.boxes.splice(state.selected, 1);
    state.selected = -1;
    event.preventDefault();
    draw();
  }
}

// --- pictures and patches -------------------------------------------------------------

function loadPicture(reply) {
  const img = new Image();
  img.onload = () => {
    state.imageId = reply.image_id;
    state.frame = img;
    state.width = reply.width;
    state.height = reply.height;
    state.detected = reply.boxes.map((b) => b.slice());
    state.boxes = reply.boxes.map((b) => b.slice());
    state.selected = -1;
    $("redetect").disabled = false;
    draw();
    say(reply.note || "");
  };
  img.src = reply.frame;
}

async function uploadPhoto(file) {
  say(`detecting key patches in ${file.name}…`);
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    loadPicture(await api("/api/photo", { method: "POST", body: form }));
  } catch (e) {
    say(e.message, true);
  }
}

async function pickTestImage(index) {
  try {
    loadPicture(await api(`/api/test-images/${index}`, { method: "POST" }));
  } catch (e) {
    say(e.message, true);
  }
}

async function addPatches(files) {
  for (const file of files) {
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const reply = await api("/api/patch", { method: "POST", body: form });
      state.extras.push({ id: reply.patch_id, thumb: reply.thumb });
      say(`added patch ${file.name}`);
    } catch (e) {
      say(e.message, true);
    }
  }
  drawExtras();
}

function drawExtras() {
  const box = $("extra-patches");
  box.replaceChildren();
  state.extras.forEach((p, i) => {
    const div = document.createElement("div");
    div.className = "patch";
    const img = document.createElement("img");
    img.src = p.thumb;
    img.alt = `patch ${i + 1}`;
    const rm = document.createElement("button");
    rm.textContent = "×";
    rm.title = "remove this patch";
    rm.onclick = () => {
      state.extras.splice(i, 1);
      drawExtras();
    };
    div.append(img, rm);
    box.append(div);
  });
}

// --- generation ---------------------------------------------------------------------

function randomOrder(n) {
  const order = [...Array(n).keys()];
  while (order.every((v, i) => v === i)) {
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
  }
  return order;
}

async function generate(order = null) {
  const boxes = usedBoxes();
  const body = {
    image_id: boxes.length ? state.imageId : null,
    boxes,
    patch_ids: state.extras.map((p) => p.id),
    seed: state.seed,
    order,
  };
  say("generating…");
  try {
    const r = await api("/api/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    for (const [id, key] of [["mask", "mask"], ["generated", "image"], ["pasted", "pasted"]]) {
      const img = $(id);
      img.src = r[key];
      img.dataset.count = String(parseInt(img.dataset.count || "0", 10) + 1);
    }
    const strip = $("used-patches");
    strip.replaceChildren(
      ...r.patches.map((src, i) => {
        const img = document.createElement("img");
        img.src = src;
        img.alt = `input patch ${r.order[i] + 1}`;
        img.title = `patch ${r.order[i] + 1}`;
        return img;
      }),
    );
    $("seed-info").textContent = `noise seed ${state.seed} · ${(r.seconds * 1000).toFixed(0)} ms`;
    const note = $("order-note");
    if (r.max_diff === null) {
      note.textContent = "";
      delete note.dataset.maxDiff;
    } else {
      const orig = r.order.map((_, i) => i + 1).join(", ");
      note.textContent =
        `Patch order ${r.order.map((i) => i + 1).join(", ")} instead of ${orig}: the generated image differs ` +
        `from the one in the original order by at most ${r.max_diff.toExponential(1)} (pixels in [-1, 1]). ` +
        "The generator sums the patches' features, so their order cannot matter.";
      note.dataset.maxDiff = String(r.max_diff);
    }
    say(`generated from ${r.patches.length} patches`);
  } catch (e) {
    say(e.message, true);
  }
}

function patchCount() {
  return Math.min(numPatches(), state.boxes.length) + state.extras.length;
}

// --- start -----------------------------------------------------------------------------

async function start() {
  const canvas = $("canvas");
  canvas.addEventListener("pointerdown", onDown);
  canvas.addEventListener("pointermove", onMove);
  canvas.addEventListener("pointerup", onUp);
  canvas.addEventListener("keydown", onKey);
  $("photo-input").addEventListener("change", (e) => {
    if (e.target.files.length) uploadPhoto(e.target.files[0]);
    e.target.value = "";
  });
  $("patch-input").addEventListener("change", (e) => {
    addPatches([...e.target.files]);
    e.target.value = "";
  });
  $("num-patches").addEventListener("input", draw);
  $("redetect").addEventListener("click", () => {
    state.boxes = state.detected.map((b) => b.slice());
    state.selected = -1;
    draw();
  });
  $("generate").addEventListener("click", () => generate());
  $("resample").addEventListener("click", () => {
    state.seed += 1;
    generate();
  });
  $("shuffle").addEventListener("click", () => {
    const n = patchCount();
    if (n < 2) say("shuffling needs at least 2 patches", true);
    else generate(randomOrder(n));
  });
  try {
    state.info = await api("/api/info");
  } catch (e) {
    say(e.message, true);
    return;
  }
  const info = state.info;
  $("model-info").textContent =
    `checkpoint step ${info.step} · ${info.image_size}×${info.image_size} · trained with N=${info.num_patches} · ` +
    `any N up to ${info.max_patches}`;
  $("num-patches").max = String(info.max_patches);
  $("num-patches").value = String(info.num_patches);
  if (info.test_images > 0) {
    const { thumbnails } = await api("/api/test-images");
    const box = $("dataset");
    thumbnails.forEach((src, i) => {
      const img = document.createElement("img");
      img.src = src;
      img.alt = `test image ${i}`;
      img.title = `test image ${i}`;
      img.onclick = () => pickTestImage(i);
      box.append(img);
    });
    box.hidden = false;
  }
  document.body.dataset.ready = "1";
}

start();
