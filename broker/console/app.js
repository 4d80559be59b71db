/* The buurtbus operator console (broker/console/): talks to the broker's
 * JSON API under /console/api with the token the operator typed, kept in
 * sessionStorage (this tab only; never in a URL). Everything shown is set
 * with textContent: nothing from the API becomes markup. */
'use strict';

const TOKEN_KEY = 'buurtbus-console-token';
const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);
let timer = null;
let last = null; // the previous stats, for rates

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(path, body) {
  const opts = { headers: { 'Authorization': 'Bearer ' + token() }, cache: 'no-store' };
  if (body !== undefined) {
    opts.method = 'POST';
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const res = await fetch('/console/api/' + path, opts);
  if (res.status === 401) {
    signOut('The token was refused.');
    throw new Error('unauthorized');
  }
  let data = null;
  try { data = await res.json(); } catch (e) { data = { error: 'bad_answer' }; }
  if (!res.ok) {
    const err = new Error(data && data.error ? data.error : 'http_' + res.status);
    err.data = data;
    throw err;
  }
  return data;
}

function num(n) { return n === null || n === undefined ? '–' : Number(n).toLocaleString('en'); }

function row(tbody, cells) {
  const tr = document.createElement('tr');
  for (const c of cells) {
    const td = document.createElement('td');
    if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? '–' : String(c);
    tr.appendChild(td);
  }
  tbody.appendChild(tr);
  return tr;
}

function clear(tbody) { while (tbody.firstChild) tbody.removeChild(tbody.firstChild); }

function fmtUs(us) {
  if (us === null) return '> 15 min';
  if (us < 1000) return us + ' µs';
  if (us < 1000000) return (us / 1000) + ' ms';
  return (us / 1000000) + ' s';
}

/* A quantile from bucket counts: the bucket's upper bound. */
function quantile(bounds, counts, q) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (!total) return undefined;
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    seen += counts[i];
    if (seen >= q * total) return bounds[i];
  }
  return null;
}

function showStats(s) {
  $('broker-name').textContent = s.broker;
  $('status').textContent = s.ready ? 'ready' : 'not ready';
  $('status').className = 'badge ' + (s.ready ? 'ok' : 'bad');
  $('reports-in').textContent = num(s.reports_in);
  $('routed').textContent = num(s.routed);
  $('deliveries').textContent = num(s.deliveries);
  $('dead-count').textContent = num(s.dead_letters);
  $('inflight').textContent = num(s.inflight);
  $('paused').textContent = s.paused ? 'input paused (backlog)' : '';
  $('directory').textContent = num(s.directory.users) + ' users, ' + num(s.directory.groups) + ' groups';
  let counts = s.latency.counts, note = 'since start';
  if (last) {
    const dt = (s.now_ms - last.now_ms) / 1000;
    if (dt > 0) {
      $('reports-rate').textContent = ((s.reports_in - last.reports_in) / dt).toFixed(1) + ' /s';
      $('deliveries-rate').textContent = ((s.deliveries - last.deliveries) / dt).toFixed(1) + ' /s';
    }
    const recent = counts.map((c, i) => c - last.latency.counts[i]);
    if (recent.some((c) => c > 0)) { counts = recent; note = 'last ' + Math.round(dt) + ' s'; }
  }
  const p50 = quantile(s.latency.bounds_us, counts, 0.5), p99 = quantile(s.latency.bounds_us, counts, 0.99);
  $('latency').textContent = p50 === undefined ? '–' : '≤ ' + fmtUs(p50) + ' / ≤ ' + fmtUs(p99);
  $('latency-note').textContent = p50 === undefined ? 'nothing committed yet' : note;
  const tb = $('channels').tBodies[0];
  clear(tb);
  for (const [name, n] of Object.entries(s.channels)) row(tb, [name, num(n)]).dataset.channel = name;
  last = s;
}

function showStreams(d) {
  const tb = $('streams').tBodies[0], cb = $('consumers').tBodies[0];
  clear(tb);
  clear(cb);
  for (const s of d.streams) {
    if (!s.groups.length) row(tb, [s.name, num(s.length), '', '', '', '']).dataset.stream = s.name;
    for (const g of s.groups) {
      row(tb, [s.name, num(s.length), g.name, num(g.pending), num(g.lag), num(g.consumers)]).dataset.stream = s.name;
      for (const c of g.members) row(cb, [s.name, g.name, c.name, num(c.pending), (c.idle_ms / 1000).toFixed(1) + ' s']);
    }
  }
}

async function loadDead() {
  const d = await api('dead?count=50');
  const tb = $('dead').tBodies[0];
  clear(tb);
  for (const e of d.dead) {
    let action;
    if (e.replayable) {
      action = document.createElement('button');
      action.type = 'button';
      action.textContent = 'Replay';
      action.className = 'replay';
      action.addEventListener('click', () => replay(e.id, action));
    } else if (e.replay_command) {
      action = document.createElement('code');
      action.className = 'cmd';
      action.textContent = e.replay_command;
    } else {
      action = '';
    }
    const tr = row(tb, [new Date(e.time_ms).toLocaleString(), e.reason, e.detail, e.stream, e.entry,
      num(e.size) + ' B', action]);
    tr.dataset.id = e.id;
    tr.dataset.reason = e.reason || '';
  }
}

async function replay(id, button) {
  button.disabled = true;
  const msg = $('dead-message');
  try {
    const r = await api('dead/replay', { id: id });
    msg.textContent = 'Dead letter ' + id + ' went back to its stream as ' + r.replayed_as + '.';
  } catch (e) {
    msg.textContent = e.data && e.data.command ? 'Run: ' + e.data.command : 'Replay failed: ' + e.message;
  }
  msg.hidden = false;
  await loadDead().catch(() => {});
}

async function loadReports() {
  const d = await api('reports?count=30');
  const sel = $('report-pick');
  const picked = sel.value; // kept across the refresh when still listed
  while (sel.options.length > 1) sel.remove(1);
  for (const r of d.reports) {
    const o = document.createElement('option');
    o.value = r.entry;
    o.textContent = r.decodes ? r.entry + ' — ' + r.id + ' (' + r.category + ', ' + r.urgency + ')' : r.entry + ' — does not decode';
    sel.appendChild(o);
  }
  if (picked && [...sel.options].some((o) => o.value === picked)) sel.value = picked;
}

async function explain() {
  const err = $('explain-error');
  err.hidden = true;
  let body;
  const text = $('report-json').value.trim();
  if (text) {
    try { body = { report: JSON.parse(text) }; } catch (e) { err.textContent = 'Not JSON: ' + e.message; err.hidden = false; return; }
  } else if ($('report-pick').value) {
    body = { entry: $('report-pick').value };
  } else {
    err.textContent = 'Pick a report or paste one.';
    err.hidden = false;
    return;
  }
  $('explain').disabled = true;
  try {
    const r = await api('explain', body);
    $('explain-summary').textContent = 'Report ' + r.report + ' (' + r.category + ', ' + r.urgency + '): considered ' +
      r.considered + ', notified ' + r.recipients + ' people, ' + r.deliveries + ' deliveries — push ' + r.channels.push +
      ', email ' + r.channels.email + ', inbox ' + r.channels.inbox + ', digest ' + r.channels.digest +
      ', social ' + r.channels.social + (r.truncated ? ' (list truncated)' : '') + '. Directory: ' +
      r.directory.users + ' users, up to ' + r.directory.last_id + '.';
    const rb = $('recipients').tBodies[0], fb = $('filtered').tBodies[0], gb = $('groups').tBodies[0];
    clear(rb); clear(fb); clear(gb);
    for (const p of r.people) {
      const tr = p.verdict === 'notified'
        ? row(rb, [p.user, p.route, p.channels.join(', '), p.notes.join(', '), p.group])
        : row(fb, [p.user, p.route, p.verdict, p.group]);
      tr.dataset.user = p.user;
      tr.dataset.verdict = p.verdict;
    }
    for (const g of r.groups) row(gb, [g.group, g.route, g.verdict]);
    $('explain-result').hidden = false;
  } catch (e) {
    err.textContent = 'Explanation failed: ' + e.message + (e.data && e.data.detail ? ' (' + e.data.detail + ')' : '');
    err.hidden = false;
  } finally {
    $('explain').disabled = false;
  }
}

async function poll() {
  try {
    const [s, st] = await Promise.all([api('stats'), api('streams')]);
    showStats(s);
    showStreams(st);
  } catch (e) {
    if (e.message !== 'unauthorized') $('status').textContent = 'unreachable';
  }
}

function signIn() {
  $('login').hidden = true;
  $('console').hidden = false;
  $('signout').hidden = false;
  last = null;
  poll().then(() => Promise.all([loadDead(), loadReports()])).catch(() => {});
  timer = setInterval(poll, POLL_MS);
}

function signOut(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (timer) clearInterval(timer);
  timer = null;
  $('console').hidden = true;
  $('login').hidden = false;
  $('signout').hidden = true;
  $('status').textContent = 'not signed in';
  $('status').className = 'badge';
  const e = $('login-error');
  e.textContent = why || '';
  e.hidden = !why;
}

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
    $('token').value = '';
    signIn();
  });
  $('signout').addEventListener('click', () => signOut());
  $('dead-refresh').addEventListener('click', () => loadDead().catch(() => {}));
  $('reports-refresh').addEventListener('click', () => loadReports().catch(() => {}));
  $('report-pick').addEventListener('change', () => { if ($('report-pick').value) $('report-json').value = ''; });
  $('explain').addEventListener('click', explain);
  if (token()) signIn();
});
