// The inpainting page: load a photo, paint a mask over it, send both to the API, compare.
//
// The mask lives on an offscreen canvas of the photo's natural size (white = hole, black =
// keep), so what is sent matches the photo pixel for pixel however the page scales it. The
// translucent overlay the user sees is a second canvas of the same size, drawn with the same
// strokes. Strokes are kept as lists of points, so undo replays them instead of storing images.
'use strict';

(() => {
  const API = 'api/v1/inpaint';
  const OVERLAY_COLOR = '#ff2d6f';
  const BRUSH_MIN = 2;
  const BRUSH_MAX = 200;
  const MAX_UPSCALE = 4; // a small photo is shown at most this many times its size

  const $ = (id) => document.getElementById(id);
  const els = {
    file: $('file-input'),
    brush: $('brush-size'),
    brushValue: $('brush-size-value'),
    eraser: $('eraser'),
    undo: $('undo'),
    clear: $('clear'),
    showMask: $('show-mask'),
    strategy: $('strategy'),
    dilate: $('dilate'),
    dilateValue: $('dilate-value'),
    feather: $('feather'),
    featherValue: $('feather-value'),
    run: $('run'),
    statusText: $('status-text'),
    warnings: $('warnings'),
    error: $('error'),
    compare: $('compare'),
    compareValue: $('compare-value'),
    download: $('download'),
    maskDownload: $('mask-download'),
    keepEditing: $('continue'),
    dropZone: $('drop-zone'),
    placeholder: $('placeholder'),
    stage: $('stage'),
    photo: $('photo'),
    overlay: $('mask-canvas'),
    result: $('result-image'),
    divider: $('divider'),
    labelAfter: $('label-after'),
    labelBefore: $('label-before'),
    cursor: $('brush-cursor'),
  };

  const mask = document.createElement('canvas'); // natural size: what is sent
  const maskCtx = mask.getContext('2d', { willReadFrequently: true });
  const overlayCtx = els.overlay.getContext('2d');

  const state = {
    image: null, // the Blob sent as `image`
    imageName: '',
    width: 0,
    height: 0,
    strokes: [], // {erase, size, points: [[x, y], ...]} in photo pixels, or {clear: true}
    drawing: null, // the stroke under the pointer
    eraser: false,
    busy: false,
    resultBlob: null,
    urls: { photo: null, result: null, mask: null },
  };

  // ------------------------------------------------------------------ status and messages

  function setState(name) {
    document.body.dataset.state = name;
  }

  function setStatus(text) {
    els.statusText.textContent = text;
  }

  function showError(message) {
    els.error.textContent = message || '';
    els.error.hidden = !message;
  }

  function showWarnings(header) {
    const items = header ? header.split('; ').filter(Boolean) : [];
    els.warnings.replaceChildren(
      ...items.map((text) => {
        const line = document.createElement('p');
        line.textContent = `Warning: ${text}`;
        return line;
      }),
    );
    els.warnings.hidden = items.length === 0;
  }

  function replaceUrl(key, url) {
    if (state.urls[key]) URL.revokeObjectURL(state.urls[key]);
    state.urls[key] = url;
  }

  function stem(name) {
    return name.replace(/\.[^.]*$/, '') || 'photo';
  }

  // ------------------------------------------------------------------ loading a photo

  async function loadPhoto(blob, name) {
    showError(null);
    showWarnings('');
    const url = URL.createObjectURL(blob);
    const probe = new Image();
    probe.src = url;
    try {
      await probe.decode();
    } catch (_) {
      URL.revokeObjectURL(url);
      showError(`Cannot show ${name}: this browser does not read it as an image.`);
      return;
    }
    replaceUrl('photo', url);
    els.photo.src = url;
    state.image = blob;
    state.imageName = name;
    state.width = probe.naturalWidth;
    state.height = probe.naturalHeight;
    for (const canvas of [mask, els.overlay]) {
      canvas.width = state.width;
      canvas.height = state.height;
    }
    state.strokes = [];
    state.drawing = null;
    redraw();
    clearResult();
    els.placeholder.hidden = true;
    els.stage.hidden = false;
    layout();
    els.run.disabled = false;
    setState('ready');
    setStatus(`${name}: ${state.width}×${state.height}. Paint over what to remove, then run.`);
  }

  function layout() {
    if (!state.width) return;
    const area = els.dropZone;
    const style = getComputedStyle(area);
    const padX = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
    const padY = parseFloat(style.paddingTop) + parseFloat(style.paddingBottom);
    const width = Math.max(120, area.clientWidth - padX);
    const top = Math.max(0, area.getBoundingClientRect().top);
    const height = Math.max(240, window.innerHeight - top - padY);
    const scale = Math.min(width / state.width, height / state.height, MAX_UPSCALE);
    els.stage.style.width = `${Math.max(1, Math.round(state.width * scale))}px`;
    els.stage.style.height = `${Math.max(1, Math.round(state.height * scale))}px`;
    sizeCursor();
  }

  // ------------------------------------------------------------------ painting

  function paint(ctx, stroke, from, to, forMask) {
    ctx.save();
    if (forMask) {
      ctx.globalCompositeOperation = 'source-over';
      ctx.strokeStyle = ctx.fillStyle = stroke.erase ? '#000000' : '#ffffff';
    } else {
      ctx.globalCompositeOperation = stroke.erase ? 'destination-out' : 'source-over';
      ctx.strokeStyle = ctx.fillStyle = OVERLAY_COLOR;
    }
    ctx.lineWidth = stroke.size;
    ctx.lineCap = 'round';
    ctx.lineJoin = 'round';
    ctx.beginPath();
    if (to) {
      ctx.moveTo(from[0], from[1]);
      ctx.lineTo(to[0], to[1]);
      ctx.stroke();
    } else {
      ctx.arc(from[0], from[1], stroke.size / 2, 0, 2 * Math.PI);
      ctx.fill();
    }
    ctx.restore();
  }

  function drawPart(stroke, from, to) {
    paint(maskCtx, stroke, from, to, true);
    paint(overlayCtx, stroke, from, to, false);
  }

  function blank() {
    maskCtx.globalCompositeOperation = 'source-over';
    maskCtx.fillStyle = '#000000';
    maskCtx.fillRect(0, 0, mask.width, mask.height);
    overlayCtx.clearRect(0, 0, els.overlay.width, els.overlay.height);
  }

  function redraw() {
    blank();
    for (const stroke of state.strokes) {
      if (stroke.clear) {
        blank();
        continue;
      }
      drawPart(stroke, stroke.points[0]);
      for (let i = 1; i < stroke.points.length; i++) {
        drawPart(stroke, stroke.points[i - 1], stroke.points[i]);
      }
    }
    updateButtons();
  }

  function updateButtons() {
    const last = state.strokes[state.strokes.length - 1];
    els.undo.disabled = state.strokes.length === 0;
    els.clear.disabled = !last || Boolean(last.clear);
  }

  function toPhoto(event) {
    const rect = els.stage.getBoundingClientRect();
    return [
      ((event.clientX - rect.left) * state.width) / rect.width,
      ((event.clientY - rect.top) * state.height) / rect.height,
    ];
  }

  function brushInPhotoPixels() {
    return (Number(els.brush.value) * state.width) / els.stage.getBoundingClientRect().width;
  }

  function startStroke(event) {
    if (event.button !== 0 || !state.width) return;
    event.preventDefault();
    els.stage.setPointerCapture(event.pointerId);
    if (!els.result.hidden) setCompare(0); // paint on the photo, not on the result
    const stroke = { erase: state.eraser, size: brushInPhotoPixels(), points: [toPhoto(event)] };
    state.strokes.push(stroke);
    state.drawing = stroke;
    drawPart(stroke, stroke.points[0]);
    updateButtons();
  }

  function extendStroke(event) {
    moveCursor(event);
    const stroke = state.drawing;
    if (!stroke) return;
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const e of events.length ? events : [event]) {
      const point = toPhoto(e);
      drawPart(stroke, stroke.points[stroke.points.length - 1], point);
      stroke.points.push(point);
    }
  }

  function endStroke() {
    state.drawing = null;
  }

  function undo() {
    if (state.drawing || state.strokes.length === 0) return;
    state.strokes.pop();
    redraw();
  }

  function clearMask() {
    const last = state.strokes[state.strokes.length - 1];
    if (state.drawing || !last || last.clear) return;
    state.strokes.push({ clear: true }); // undoable
    redraw();
  }

  function setBrush(size) {
    const value = Math.min(BRUSH_MAX, Math.max(BRUSH_MIN, Math.round(size)));
    els.brush.value = String(value);
    els.brushValue.textContent = String(value);
    sizeCursor();
  }

  function setEraser(on) {
    state.eraser = on;
    els.eraser.setAttribute('aria-pressed', String(on));
    els.cursor.classList.toggle('eraser', on);
  }

  function sizeCursor() {
    const size = `${els.brush.value}px`;
    els.cursor.style.width = size;
    els.cursor.style.height = size;
  }

  function moveCursor(event) {
    const rect = els.stage.getBoundingClientRect();
    els.cursor.style.left = `${event.clientX - rect.left}px`;
    els.cursor.style.top = `${event.clientY - rect.top}px`;
    els.cursor.hidden = false;
  }

  // ------------------------------------------------------------------ running

  // The mask as a PNG of the photo's size, every pixel 0 or 255: the strokes' antialiased edges
  // are snapped at the server's threshold (0.5), so the upload is binary and the server has
  // nothing to warn about.
  function maskPng() {
    const data = maskCtx.getImageData(0, 0, mask.width, mask.height);
    const px = data.data;
    for (let i = 0; i < px.length; i += 4) {
      const value = px[i] >= 128 ? 255 : 0;
      px[i] = px[i + 1] = px[i + 2] = value;
      px[i + 3] = 255;
    }
    const out = document.createElement('canvas');
    out.width = mask.width;
    out.height = mask.height;
    out.getContext('2d').putImageData(data, 0, 0);
    return new Promise((resolve, reject) => {
      out.toBlob((blob) => (blob ? resolve(blob) : reject(new Error('cannot encode the mask'))), 'image/png');
    });
  }

  async function errorText(response) {
    let message = response.statusText || 'request failed';
    try {
      const body = await response.json();
      if (body && body.error) message = body.error;
    } catch (_) {
      // not JSON: keep the status text
    }
    const retry = response.headers.get('Retry-After');
    if (response.status === 503 && retry) message += ` (try again in ${retry} s)`;
    return `Error ${response.status}: ${message}`;
  }

  async function run() {
    if (state.busy || !state.image) return;
    state.busy = true;
    els.run.disabled = true;
    els.stage.setAttribute('aria-busy', 'true');
    setState('running');
    showError(null);
    showWarnings('');
    const started = performance.now();
    const seconds = () => ((performance.now() - started) / 1000).toFixed(1);
    const tick = () => setStatus(`Inpainting… ${seconds()} s`);
    tick();
    const timer = setInterval(tick, 200);
    let outcome;
    try {
      const maskBlob = await maskPng();
      const form = new FormData();
      form.append('image', state.image, state.imageName);
      form.append('mask', maskBlob, 'mask.png');
      form.append('strategy', els.strategy.value);
      form.append('dilate_mask', els.dilate.value);
      form.append('feather', els.feather.value);
      const response = await fetch(API, { method: 'POST', body: form });
      if (!response.ok) throw new Error(await errorText(response));
      await showResult(await response.blob(), maskBlob);
      showWarnings(response.headers.get('X-Inpaint-Warnings') || '');
      outcome = { state: 'done', status: `Done in ${seconds()} s (strategy ${els.strategy.value}).` };
    } catch (error) {
      const network = error instanceof TypeError;
      showError(network ? `Cannot reach the server: ${error.message}` : error.message);
      outcome = { state: 'error', status: 'The run failed; see the message below.' };
    } finally {
      clearInterval(timer);
      state.busy = false;
      els.run.disabled = false;
      els.stage.removeAttribute('aria-busy');
    }
    setStatus(outcome.status);
    setState(outcome.state);
  }

  // ------------------------------------------------------------------ the result

  async function showResult(blob, maskBlob) {
    const url = URL.createObjectURL(blob);
    const probe = new Image();
    probe.src = url;
    await probe.decode();
    replaceUrl('result', url);
    state.resultBlob = blob;
    els.result.src = url;
    els.result.hidden = false;
    els.download.href = url;
    els.download.download = `${stem(state.imageName)}-inpainted.png`;
    els.download.hidden = false;
    const maskUrl = URL.createObjectURL(maskBlob);
    replaceUrl('mask', maskUrl);
    els.maskDownload.href = maskUrl;
    els.maskDownload.download = `${stem(state.imageName)}-mask.png`;
    els.maskDownload.hidden = false;
    els.keepEditing.hidden = false;
    els.compare.disabled = false;
    els.divider.hidden = false;
    setCompare(50);
  }

  function clearResult() {
    els.result.hidden = true;
    els.result.removeAttribute('src');
    replaceUrl('result', null);
    replaceUrl('mask', null);
    state.resultBlob = null;
    for (const el of [els.download, els.maskDownload, els.keepEditing, els.divider]) el.hidden = true;
    els.labelAfter.hidden = els.labelBefore.hidden = true;
    els.compare.disabled = true;
  }

  function setCompare(value) {
    const v = Math.min(100, Math.max(0, Number(value)));
    els.compare.value = String(v);
    els.compareValue.textContent = String(v);
    els.result.style.clipPath = `inset(0 ${100 - v}% 0 0)`;
    els.divider.style.left = `${v}%`;
    const shown = !els.result.hidden;
    els.labelAfter.hidden = !shown || v === 0;
    els.labelBefore.hidden = !shown || v === 100;
  }

  // ------------------------------------------------------------------ wiring

  function onKey(event) {
    const t = event.target;
    const typing =
      t.isContentEditable ||
      t.tagName === 'SELECT' ||
      t.tagName === 'TEXTAREA' ||
      (t.tagName === 'INPUT' && !['range', 'checkbox', 'button', 'file'].includes(t.type));
    const mod = event.ctrlKey || event.metaKey;
    if (mod && event.key === 'Enter') {
      event.preventDefault();
      run();
      return;
    }
    if (typing) return;
    if (mod && !event.shiftKey && event.key.toLowerCase() === 'z') {
      event.preventDefault();
      undo();
      return;
    }
    if (mod || event.altKey) return;
    const size = Number(els.brush.value);
    const step = Math.max(1, Math.round(size * 0.15));
    if (event.key === '[') setBrush(size - step);
    else if (event.key === ']') setBrush(size + step);
    else if (event.key.toLowerCase() === 'e') setEraser(!state.eraser);
    else if (event.key.toLowerCase() === 'm') {
      els.showMask.checked = !els.showMask.checked;
      els.overlay.hidden = !els.showMask.checked;
    } else return;
    event.preventDefault();
  }

  function hasFiles(event) {
    return Boolean(event.dataTransfer) && Array.from(event.dataTransfer.types).includes('Files');
  }

  els.file.addEventListener('change', () => {
    const file = els.file.files[0];
    if (file) loadPhoto(file, file.name);
  });
  for (const type of ['dragenter', 'dragover']) {
    document.addEventListener(type, (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      els.dropZone.classList.add('dragging');
    });
  }
  document.addEventListener('dragleave', (event) => {
    if (!event.relatedTarget) els.dropZone.classList.remove('dragging');
  });
  document.addEventListener('drop', (event) => {
    event.preventDefault(); // never navigate to the dropped file
    els.dropZone.classList.remove('dragging');
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) loadPhoto(file, file.name);
  });

  els.stage.addEventListener('pointerdown', startStroke);
  els.stage.addEventListener('pointermove', extendStroke);
  els.stage.addEventListener('pointerup', endStroke);
  els.stage.addEventListener('pointercancel', endStroke);
  els.stage.addEventListener('pointerleave', () => {
    els.cursor.hidden = true;
  });
  els.brush.addEventListener('input', () => setBrush(els.brush.value));
  els.eraser.addEventListener('click', () => setEraser(!state.eraser));
  els.undo.addEventListener('click', undo);
  els.clear.addEventListener('click', clearMask);
  els.showMask.addEventListener('change', () => {
    els.overlay.hidden = !els.showMask.checked;
  });
  els.run.addEventListener('click', run);
  els.compare.addEventListener('input', () => setCompare(els.compare.value));
  els.dilate.addEventListener('input', () => {
    els.dilateValue.textContent = els.dilate.value;
  });
  els.feather.addEventListener('input', () => {
    els.featherValue.textContent = els.feather.value;
  });
  els.keepEditing.addEventListener('click', () => {
    if (state.resultBlob) loadPhoto(state.resultBlob, `${stem(state.imageName)}-inpainted.png`);
  });
  document.addEventListener('keydown', onKey);
  window.addEventListener('resize', layout);
  setBrush(els.brush.value);
})();
