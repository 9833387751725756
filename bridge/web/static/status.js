// The status page: the daemon's figures with names a person can read, refreshed twice a second.
'use strict';
const FIGURES = {
  source: ['health', 'Source', 'live: frames arrive; stalled: none for a moment; lost / reconnecting: the sender is gone and is being looked for'],
  source_error: ['health', 'Source problem', 'why the source cannot be opened'],
  render: ['health', 'Render', 'ok, or stalled: no processed frame for output.watchdog_ms while the input is live'],
  render_detail: ['health', 'Render detail', ''],
  on_stall: ['health', 'Shown on a stall', 'what goes out while the render is stalled'],
  showing: ['health', 'Output shows', 'frame: processed frames; input: the input (bypass or stall); card / black / hold otherwise'],
  preset: ['health', 'Preset', 'the preset recalled last (or warm-up progress)'],
  fps: ['rates', 'Output fps', 'frames sent to the sinks per second. It stays steady whatever the model does: when no new processed frame is ready, the last one is sent again'],
  fps_processed: ['rates', 'Processed fps', 'frames the model finished per second. Below the output fps, some output frames are repeats; 0 while bypassed, stalled, without input or while the similarity filter skips frames'],
  output_fps_target: ['rates', 'Output rate target', 'the output clock (output.fps, or the source\'s measured rate)'],
  latency_ms: ['rates', 'Latency (median)', 'milliseconds from capture to output'],
  latency_p95_ms: ['rates', 'Latency (95th percentile)', 'milliseconds; 1 frame in 20 takes longer'],
  phase_offset_ms: ['rates', 'Output phase offset', 'where the output ticks sit after the processed frames (phase lock)'],
  dropped: ['counts', 'Dropped frames', 'frames replaced by newer ones before they were used (input or output mailbox): the model is slower than the source'],
  rejected_frames: ['counts', 'Rejected input frames', 'frames the source delivered that could not be used'],
  frames_rendered: ['counts', 'Frames rendered', 'frames the model has processed'],
  render_errors: ['counts', 'Render errors', 'model calls that raised (the stream is reset each time)'],
  nonfinite_outputs: ['counts', 'Non-finite outputs', 'outputs with NaN/inf, never sent (the last good frame stays up)'],
  last_render_error: ['counts', 'Last render error', ''],
};
const SINK_COLUMNS = [['name', 'Sink'], ['state', 'State'], ['sends', 'Frames sent'], ['dropped', 'Dropped'],
  ['errors', 'Errors'], ['last_error', 'Last error']];

function esc(t) {
  return String(t).replace(/[&<>"]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]));
}
function human(key) {
  const s = String(key).replace(/_/g, ' ');
  return s.charAt(0).toUpperCase() + s.slice(1);
}
function show(v) {
  if (v === null || v === undefined || v === '') return '<span class="dim">—</span>';
  if (typeof v === 'boolean') return v ? 'on' : 'off';
  if (typeof v === 'object') return esc(JSON.stringify(v));
  return esc(v);
}
function row(label, value, help) {
  return '<tr><td class="k">' + esc(label) + (help ? '<span class="help">' + esc(help) + '</span>' : '') +
    '</td><td class="v">' + value + '</td></tr>';
}
function refreshImage(id) {
  const img = document.getElementById(id);
  const next = () => setTimeout(() => refreshImage(id), 250);
  const probe = new Image();
  probe.onload = () => { img.src = probe.src; next(); };
  probe.onerror = next;
  probe.src = '/' + id + '.jpg?t=' + Date.now();
}
function render(s) {
  const tables = {health: [], rates: [], counts: [], other: []};
  for (const [k, v] of Object.entries(s)) {
    if (k === 'sinks' || k === 'params' || k === 'control_page') continue;
    const f = FIGURES[k];
    if (k === 'acceleration' && v && typeof v === 'object') {
      for (const [k2, v2] of Object.entries(v)) tables.other.push(row('Acceleration: ' + human(k2), show(v2)));
      continue;
    }
    if (f) tables[f[0]].push(row(f[1], show(v), f[2]));
    else tables.other.push(row(human(k), show(v)));
  }
  for (const [id, rows] of Object.entries(tables)) document.getElementById(id).innerHTML = rows.join('');
  const sinks = s.sinks || [];
  document.getElementById('sinks').innerHTML = sinks.length ?
    '<tr>' + SINK_COLUMNS.map(c => '<th>' + c[1] + '</th>').join('') + '</tr>' +
    sinks.map(k => '<tr>' + SINK_COLUMNS.map(c => '<td class="v">' + show(k[c[0]]) + '</td>').join('') + '</tr>').join('')
    : row('No sink', '');
  const params = s.params || {};
  document.getElementById('params').innerHTML =
    Object.entries(params).map(([k, v]) => row(human(k), show(v))).join('');
  document.getElementById('control-link').hidden = !s.control_page;
  const st = document.getElementById('state');
  st.textContent = 'source ' + s.source + (s.render && s.render !== 'ok' ? ', render ' + s.render : '');
  st.className = 'pill ' + (s.source === 'live' && s.render !== 'stalled' ? 'live' : 'bad');
}
async function refreshFigures() {
  try {
    const r = await fetch('/status.json', {cache: 'no-store'});
    render(await r.json());
  } catch (e) {
    const st = document.getElementById('state');
    st.textContent = 'daemon not answering'; st.className = 'pill bad';
  }
  setTimeout(refreshFigures, 500);
}
refreshImage('input'); refreshImage('output'); refreshFigures();
