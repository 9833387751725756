// The control page. Built from the daemon's parameter table (the first server-sent event), so a
// new numeric parameter gets a fader with no change here. Every change is POSTed to /api/osc as
// an OSC message and goes through the same validator as OSC; what the daemon applied (from here,
// OSC or a preset) comes back as an event and moves the controls.
'use strict';

const PLACE = {  // where the known parameters go; any other one lands in "Parameters"
  prompt: 'prompt-fields', negative_prompt: 'prompt-fields', prompt_a: 'prompt-fields',
  prompt_b: 'prompt-fields', prompt_mix: 'prompt-fields',
  seed: 'seed-fields', seed_b: 'seed-fields', seed_mix: 'seed-fields',
  bypass: 'output-controls', mix: 'output-controls',
  bpm: 'tempo-fields', transition_beats: 'tempo-fields',
  smoothing: 'flicker-fields', latent_feedback: 'flicker-fields', temporal_cache: 'flicker-fields',
  temporal_frames: 'flicker-fields', temporal_interval: 'flicker-fields', temporal_injection: 'flicker-fields',
};
const LABEL = {
  prompt: 'Prompt', negative_prompt: 'Negative prompt', prompt_a: 'Prompt A', prompt_b: 'Prompt B',
  prompt_mix: 'A ⟷ B crossfader', seed: 'Seed', seed_b: 'Seed B', seed_mix: 'Seed crossfader',
  bypass: 'Bypass', mix: 'Dry / wet', filter_threshold: 'Similarity filter', bpm: 'BPM',
  transition_beats: 'Transition (beats)', temporal_cache: 'Cached attention', temporal_frames: 'Cached frames',
  temporal_interval: 'Cache refresh (frames)', temporal_injection: 'Feature injection',
  latent_feedback: 'Latent feedback',
};
const FADER_STEPS = 1000;

const state = {params: {}, byAddress: {}, values: {}, presets: [], preset: '', built: false, history: []};
const controls = {};  // name -> {set(value), error(text)}

function $(id) { return document.getElementById(id); }
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v; else if (k === 'text') e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}
function human(name) {
  if (LABEL[name]) return LABEL[name];
  const s = name.replace(/_/g, ' ');
  return s.charAt(0).toUpperCase() + s.slice(1);
}
function fmt(spec, v) {
  if (v === null || v === undefined) return '';
  if (spec.kind === 'int') return String(Math.round(v));
  return String(Math.round(v * 10000) / 10000);
}

// ---------------------------------------------------------------- sending
async function post(messages) {
  const body = messages.length === 1 ? messages[0] : {messages};
  try {
    const r = await fetch('/api/osc', {method: 'POST', headers: {'Content-Type': 'application/json'},
      body: JSON.stringify(body)});
    if ((r.headers.get('Content-Type') || '').startsWith('application/json')) return await r.json();
    return {ok: false, address: messages[0].address, reason: 'HTTP ' + r.status + ': ' + (await r.text()).trim()};
  } catch (e) {
    return {ok: false, address: messages[0].address, reason: 'daemon not answering'};
  }
}
// one request in flight per address, the latest value waiting behind it (a fader sends a lot)
const inflight = {};
function send(address, args, onResult) {
  const slot = inflight[address] || (inflight[address] = {busy: false, next: null});
  slot.next = {args, onResult};
  if (slot.busy) return;
  const pump = async () => {
    while (slot.next) {
      const job = slot.next; slot.next = null; slot.busy = true;
      const res = await post([{address, args: job.args}]);
      if (job.onResult) job.onResult(res);
      showResult(address, res);
    }
    slot.busy = false;
  };
  pump();
}
function showResult(address, res) {
  const spec = state.byAddress[address];
  if (spec && controls[spec.name]) controls[spec.name].error(res.ok ? '' : res.reason);
  else if (!res.ok) message(address + ': ' + res.reason);
}
function message(text) {
  const box = $('messages');
  const line = el('div', {text});
  box.prepend(line);
  while (box.children.length > 4) box.lastChild.remove();
  setTimeout(() => line.remove(), 12000);
}

// ---------------------------------------------------------------- controls
function errorBox() { return el('div', {class: 'err'}); }

function fader(spec, host) {
  const [lo, hi] = spec.control;
  const steps = spec.kind === 'int' ? Math.max(1, Math.min(10000, Math.abs(hi - lo))) : FADER_STEPS;
  const range = el('input', {type: 'range', min: 0, max: steps, step: 1, 'aria-label': human(spec.name)});
  const box = el('input', {type: 'number', step: spec.kind === 'int' ? 1 : 'any', inputmode: 'decimal',
    'aria-label': human(spec.name) + ' value'});
  const err = errorBox();
  const wrap = el('div', {class: 'param', 'data-name': spec.name},
    el('label', {}, el('span', {text: human(spec.name)}), el('span', {class: 'doc', text: spec.doc})),
    el('div', {class: 'fader'}, range, box), err);
  host.append(wrap);
  let dragging = false;
  const toValue = pos => {
    const v = lo + (hi - lo) * pos / steps;
    return spec.kind === 'int' ? Math.round(v) : Math.round(v * 1e6) / 1e6;
  };
  const toPos = v => Math.round(Math.min(1, Math.max(0, (v - lo) / (hi - lo))) * steps);
  // while the hand is on the fader (a drag, or keys/clicks in the last moments) the echoes of
  // its own earlier values must not pull it back; the live value is shown once it rests
  let heldUntil = 0;
  const HOLD_MS = 400;
  const settle = () => setTimeout(() => ctl.set(state.values[spec.name]), HOLD_MS + 50);
  range.addEventListener('pointerdown', () => { dragging = true; });
  const release = () => { dragging = false; heldUntil = performance.now() + HOLD_MS; settle(); };
  range.addEventListener('pointerup', release);
  range.addEventListener('pointercancel', release);
  range.addEventListener('input', () => {
    heldUntil = performance.now() + HOLD_MS;
    settle();
    const v = toValue(Number(range.value));
    box.value = fmt(spec, v);
    send(spec.address, [v]);
  });
  box.addEventListener('change', () => {
    const text = box.value.trim();
    const v = Number(text);
    if (text === '' || !Number.isFinite(v)) { ctl.error('not a number: ' + text); return; }
    send(spec.address, [v], res => {
      if (!res.ok) box.value = fmt(spec, state.values[spec.name]);  // refused: show the live value
    });
  });
  const ctl = {
    set(v) {
      if (v === null || v === undefined) return;
      if (!dragging && performance.now() >= heldUntil) range.value = toPos(v);
      if (document.activeElement !== box) box.value = fmt(spec, v);
    },
    error(text) { err.textContent = text || ''; },
  };
  return ctl;
}

function toggle(spec, host) {
  const button = el('button', {type: 'button', class: 'toggle', 'aria-pressed': 'false'});
  const err = errorBox();
  host.append(el('div', {class: 'param', 'data-name': spec.name},
    el('label', {}, el('span', {text: human(spec.name)}), el('span', {class: 'doc', text: spec.doc})), button, err));
  button.addEventListener('click', () => send(spec.address, [!state.values[spec.name]]));
  return {
    set(v) {
      button.textContent = v ? 'on' : 'off';
      button.classList.toggle('on', !!v);
      button.setAttribute('aria-pressed', v ? 'true' : 'false');
    },
    error(text) { err.textContent = text || ''; },
  };
}

function textField(spec, host) {
  const long = spec.name === 'prompt' || spec.name === 'negative_prompt';
  const input = long ? el('textarea', {rows: 3, 'aria-label': human(spec.name)})
    : el('input', {type: 'text', 'aria-label': human(spec.name)});
  const apply = el('button', {type: 'button', text: 'apply'});
  const err = errorBox();
  host.append(el('div', {class: 'param', 'data-name': spec.name},
    el('label', {}, el('span', {text: human(spec.name)}), el('span', {class: 'doc', text: spec.doc})),
    el('div', {class: 'text-row'}, input, apply), err));
  const go = () => send(spec.address, [input.value]);
  apply.addEventListener('click', go);
  input.addEventListener('keydown', e => {
    if (e.key === 'Enter' && (!long || e.ctrlKey || e.metaKey)) { e.preventDefault(); go(); }
  });
  return {
    set(v) { if (document.activeElement !== input) input.value = v ?? ''; },
    error(text) { err.textContent = text || ''; },
  };
}

function build(params) {
  for (const id of ['prompt-fields', 'seed-fields', 'output-controls', 'param-fields']) $(id).textContent = '';
  state.params = {}; state.byAddress = {};
  // the prompts first, then the crossfader under them; seeds likewise
  const order = ['prompt', 'negative_prompt', 'prompt_a', 'prompt_b', 'prompt_mix', 'seed', 'seed_b', 'seed_mix',
    'bypass', 'mix'];
  const sorted = [...params].sort((a, b) => {
    const ia = order.indexOf(a.name), ib = order.indexOf(b.name);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib);
  });
  for (const spec of sorted) {
    state.params[spec.name] = spec;
    state.byAddress[spec.address] = spec;
    state.byAddress['/sd/norm' + spec.address.slice(3)] = spec;
    const host = $(PLACE[spec.name] || 'param-fields');
    if (spec.kind === 'float' || spec.kind === 'int') controls[spec.name] = fader(spec, host);
    else if (spec.kind === 'bool') controls[spec.name] = toggle(spec, host);
    else controls[spec.name] = textField(spec, host);
  }
  state.built = true;
}

function setValues(values) {
  for (const [name, v] of Object.entries(values)) {
    state.values[name] = v;
    if (controls[name]) controls[name].set(v);
  }
}

// ---------------------------------------------------------------- presets
function renderPresets() {
  const grid = $('preset-grid');
  grid.textContent = '';
  for (const name of state.presets) {
    const b = el('button', {type: 'button', text: name, title: 'recall ' + name, 'data-preset': name});
    if (name === state.preset) b.classList.add('on');
    b.addEventListener('click', () => send('/sd/preset', [name]));
    grid.append(b);
  }
  if (!state.presets.length) grid.append(el('span', {class: 'dim', text: 'no presets loaded'}));
  $('preset-now').textContent = 'preset: ' + (state.preset || '—');
}
function setupPresets() {
  $('prev').addEventListener('click', () => send('/sd/preset/prev', []));
  $('next').addEventListener('click', () => send('/sd/preset/next', []));
  const confirmBox = $('save-confirm');
  const save = (name, overwrite) => {
    confirmBox.hidden = true;
    $('save-msg').textContent = '';
    send('/sd/preset/save', overwrite ? [name, 1] : [name], res => {
      $('save-msg').textContent = res.ok ? '' : res.reason;
    });
  };
  $('save-form').addEventListener('submit', e => {
    e.preventDefault();
    const name = $('save-name').value.trim();
    if (state.presets.includes(name)) {  // the same rule as /sd/preset/save NAME 1: never replace unasked
      $('save-question').textContent = '“' + name + '” exists. Replace it with the live state?';
      confirmBox.hidden = false;
      confirmBox.dataset.name = name;
      return;
    }
    save(name, false);
  });
  $('save-overwrite').addEventListener('click', () => save(confirmBox.dataset.name, true));
  $('save-cancel').addEventListener('click', () => { confirmBox.hidden = true; });
}

// ---------------------------------------------------------------- plots (plain canvas)
function drawPlot(canvas, series, colors, unit) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300, h = canvas.clientHeight || 60;
  if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
  if (canvas.height !== Math.round(h * dpr)) canvas.height = Math.round(h * dpr);
  const g = canvas.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const pts = state.history;
  if (!pts.length) return;
  const tEnd = pts[pts.length - 1].t;
  let top = 1;
  for (const key of series) for (const p of pts) top = Math.max(top, p[key] || 0);
  top *= 1.15;
  g.strokeStyle = '#2a2a2a'; g.lineWidth = 1;
  for (const f of [0.5, 1]) { const y = h - h * f / 1.15; g.beginPath(); g.moveTo(0, y); g.lineTo(w, y); g.stroke(); }
  g.fillStyle = '#777'; g.font = '10px system-ui,sans-serif';
  g.fillText((top / 1.15).toFixed(top < 10 ? 1 : 0) + (unit || ''), 2, h - h / 1.15 + 10);
  series.forEach((key, i) => {
    g.strokeStyle = colors[i]; g.lineWidth = 1.5; g.beginPath();
    pts.forEach((p, j) => {
      const x = w - (tEnd - p.t) / 60 * w, y = h - (p[key] || 0) / top * h;
      if (j) g.lineTo(x, y); else g.moveTo(x, y);
    });
    g.stroke();
  });
}
function drawPlots() {
  drawPlot($('plot-fps'), ['fps', 'fps_processed'], ['#4aa3ff', '#eb5']);
  drawPlot($('plot-latency'), ['latency_ms'], ['#c8f'], ' ms');
  drawPlot($('plot-drops'), ['drops_per_s'], ['#e66'], '/s');
  const p = state.history[state.history.length - 1];
  if (p) {
    $('fps-now').textContent = p.fps.toFixed(1) + ' / ' + p.fps_processed.toFixed(1);
    $('lat-now').textContent = p.latency_ms.toFixed(0) + ' ms';
    $('drop-now').textContent = p.drops_per_s.toFixed(1) + '/s';
  }
}
function addPoint(p) {
  state.history.push(p);
  while (state.history.length && p.t - state.history[0].t > 60) state.history.shift();
}

// ---------------------------------------------------------------- tempo
// the daemon reports its clock (bpm, beat, phase in the bar) with each status sample; between
// samples the page runs the beat on from the last one, so the bar dots move on the beat
const tempo = {bpm: 0, beat: 0, phase: 0, perBar: 4, at: 0, seen: false};
function setupTempo() {
  $('tap').addEventListener('click', () => send('/sd/tempo/tap', []));
  $('downbeat').addEventListener('click', () => send('/sd/tempo/downbeat', []));
  const tick = () => {
    const dots = $('beat-dots');
    if (tempo.seen && tempo.bpm > 0) {
      const beats = tempo.phase * tempo.perBar + (performance.now() - tempo.at) / 1000 * tempo.bpm / 60;
      const current = Math.floor(beats) % tempo.perBar;
      if (dots.children.length !== tempo.perBar) {
        dots.replaceChildren(...Array.from({length: tempo.perBar}, () => el('span', {class: 'dot'})));
      }
      [...dots.children].forEach((d, i) => { d.className = 'dot' + (i === current ? ' on' : ''); });
    }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}
function showTempo(t) {
  if (!t || typeof t.bpm !== 'number') return;
  Object.assign(tempo, {bpm: t.bpm, beat: t.beat, phase: t.bar_phase || 0, perBar: t.beats_per_bar || 4,
    at: performance.now(), seen: true});
  const clock = t.clock === 'link' ? 'Ableton Link, ' + (t.peers || 0) + ' peer(s)' : 'internal clock';
  const waiting = t.waiting_recall ? ' · waiting: ' + t.waiting_recall : '';
  $('tempo-now').textContent = t.bpm.toFixed(1) + ' BPM · ' + clock + ' · quantize ' + (t.quantize || 'off') + waiting;
}

// ---------------------------------------------------------------- status
function showStatus(s) {
  if (s && s.tempo) showTempo(s.tempo);
  if ('preset' in s) { state.preset = s.preset || ''; renderPresets(); }
  if ('source' in s || 'render' in s) {
    state.status = Object.assign(state.status || {}, s);
    const st = state.status;
    const bad = st.source !== 'live' || st.render === 'stalled';
    $('state').textContent = 'source ' + st.source + (st.render && st.render !== 'ok' ? ', render ' + st.render : '');
    $('state').className = 'pill ' + (bad ? 'bad' : 'live');
  }
}

// ---------------------------------------------------------------- events
let source = null;
function connect() {
  source = new EventSource('/api/events');
  const link = $('link');
  source.addEventListener('open', () => { link.textContent = 'connected'; link.className = 'pill live'; });
  source.addEventListener('hello', e => {
    const d = JSON.parse(e.data);
    build(d.params);
    state.presets = d.presets; state.preset = d.preset || '';
    state.history = d.history || [];
    setValues(d.values);
    renderPresets();
    showStatus(d.status || {});
    drawPlots();
    document.body.dataset.ready = '1';
  });
  source.addEventListener('params', e => setValues(JSON.parse(e.data)));
  source.addEventListener('state', e => showStatus(JSON.parse(e.data)));
  source.addEventListener('presets', e => { state.presets = JSON.parse(e.data).presets; renderPresets(); });
  source.addEventListener('status', e => {
    const d = JSON.parse(e.data);
    addPoint(d.point);
    showStatus(d.status);
    drawPlots();
  });
  source.addEventListener('sd_error', e => {  // what /sd/error reports: a refused command, a failed recall...
    const d = JSON.parse(e.data);
    const spec = state.byAddress[d.address];
    if (spec && controls[spec.name]) controls[spec.name].error(d.reason);
    else if (d.address === '/sd/preset/save') $('save-msg').textContent = d.reason;
    else message(d.address + ': ' + d.reason);
  });
  source.addEventListener('error', () => {
    // the connection dropped (daemon restarting, too many viewers): try again shortly
    link.textContent = 'reconnecting…'; link.className = 'pill bad';
    source.close();
    setTimeout(connect, 2000);
  });
}

function refreshImage(id) {
  const img = $(id);
  const next = () => setTimeout(() => refreshImage(id), 250);
  const probe = new Image();
  probe.onload = () => { img.src = probe.src; next(); };
  probe.onerror = next;
  probe.src = '/' + id + '.jpg?t=' + Date.now();
}

setupPresets();
setupTempo();
connect();
refreshImage('input');
refreshImage('output');
window.addEventListener('resize', drawPlots);
