// The status page's script. Every few seconds it fetches GET /status (and GET /buckets for each
// limit) and renders the same markup as the node does for the first paint, plus the traffic
// chart as inline SVG. When the admin listener has a token, the token typed into the login
// form is kept in this tab's sessionStorage and sent as "Authorization: Bearer" on each fetch.
(() => {
  'use strict';
  const TOKEN_KEY = 'tollgate-admin-token';
  const EVERY_MS = 3000;
  const TOP = 5;
  const main = document.getElementById('main');
  const updated = document.getElementById('updated');
  let timer = null;
  // The last state drawn, drawn again when the window changes size (the chart follows it).
  let last = null;

  const ENTITIES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
  const text = (v) => (v === null || v === undefined ? '' : String(v));
  const esc = (v) => text(v).replace(/[&<>"']/g, (c) => ENTITIES[c]);
  const num = (v) => Number(v) || 0;
  const rate = (v) => num(v).toFixed(1);
  const yesNo = (v) => (v === true ? 'yes' : 'no');
  const utc = (ms) => new Date(num(ms)).toISOString().replace('T', ' ').slice(0, 19) + ' UTC';

  function duration(secs) {
    const parts = [[Math.floor(secs / 86400), 'd'], [Math.floor(secs % 86400 / 3600), 'h'],
      [Math.floor(secs % 3600 / 60), 'm']];
    let out = '';
    for (const [n, unit] of parts) {
      if (n > 0 || out) out += n + unit + ' ';
    }
    return out + (secs % 60) + 's';
  }

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (e) { return null; }
  }
  function setToken(t) {
    try {
      if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) { /* storage off: the token lasts until the page is left */ }
  }

  class Unauthorized extends Error {}

  async function getJson(path) {
    const t = token();
    const r = await fetch(path, { headers: t ? { Authorization: 'Bearer ' + t } : {}, cache: 'no-store' });
    if (r.status === 401) throw new Unauthorized('admin token required');
    if (!r.ok) throw new Error(path + ' answered ' + r.status);
    return r.json();
  }

  // A limit's /buckets answer, or null ("no data") when there is none.
  async function topOf(name) {
    try {
      return await getJson('/buckets?limit=' + encodeURIComponent(name) + '&top=' + TOP + '&by=rejected');
    } catch (e) {
      if (e instanceof Unauthorized) throw e;
      return null;
    }
  }

  const facts = (items) => '<dl class="facts">' +
    items.map(([name, value]) => '<div><dt>' + name + '</dt><dd>' + value + '</dd></div>').join('') + '</dl>';

  function alerts(s) {
    let out = '';
    if (s.redis && s.redis.duplicate_node_id === true) {
      out += '<p class="alert"><strong>Duplicate node id:</strong> another live node writes the fields of node <code>' +
        esc(s.node.id) + '</code>, so the shared buckets under-count. Give every node its own <code>node_id</code>.</p>';
    }
    const drifting = s.limits.filter((l) => l.drift === true).map((l) => '<code>' + esc(l.name) + '</code>');
    if (drifting.length) {
      out += '<p class="alert"><strong>Config drift:</strong> nodes disagree on the capacity or rate of ' +
        drifting.join(', ') + '. Deploy one config everywhere.</p>';
    }
    if (s.redis && s.redis.connected === false) {
      out += '<p class="warn"><strong>Redis unreachable:</strong> this node limits from its last view and its share; what it admits is pushed when Redis is back.</p>';
    }
    return out;
  }

  function nodeSection(n) {
    const loaded = utc(n.config_loaded_at_ms) + ' (' + text(n.reloads.success) + ' reloads, ' +
      text(n.reloads.failure) + ' failed)';
    return '<section aria-labelledby="h-node"><h2 id="h-node">This node</h2>' + facts([
      ['Node id', '<code>' + esc(n.id) + '</code>'],
      ['Version', esc(n.version)],
      ['Uptime', duration(num(n.uptime_seconds))],
      ['Started', utc(n.started_at_ms)],
      ['Config file', '<code>' + esc(n.config_file) + '</code>'],
      ['Config loaded', esc(loaded)],
    ]) + '</section>';
  }

  function redisSection(r) {
    const head = '<section aria-labelledby="h-redis"><h2 id="h-redis">Redis</h2>';
    if (!r) return head + '<p>Standalone: no Redis configured. Buckets live in this process only.</p></section>';
    const round = r.sync_round_seconds === null ? 'no round in the last 10 s'
      : (num(r.sync_round_seconds) * 1000).toFixed(1) + ' ms (mean, last 10 s)';
    return head + facts([
      ['Connection', r.connected === true ? '<span class="ok">connected</span>' : '<span class="bad">disconnected</span>'],
      ['Last good sync', num(r.sync_lag_seconds).toFixed(1) + ' s ago'],
      ['Sync round trip', round],
      ['Sync rounds / errors', text(r.sync_rounds) + ' / ' + text(r.sync_errors)],
      ['Live nodes', text(r.live_nodes)],
      ['Duplicate node id', r.duplicate_node_id === true ? '<span class="bad">yes</span>' : 'no'],
      ['Clock offset', (num(r.clock_offset_seconds) * 1000).toFixed(1) + ' ms'],
    ]) + '</section>';
  }

  const LIMIT_COLUMNS = ['Limit', 'Kind', 'Capacity', 'Refill/s', 'Shadow', 'Burst guard', 'Overrides',
    'Active buckets', 'Fewest tokens', 'Admitted/s', 'Rejected/s', 'Rejected (total)', 'Drift'];

  function limitRow(l) {
    const name = esc(l.name);
    const cells = [
      ['kind', text(l.kind)], ['capacity', text(l.capacity)], ['refill_per_second', text(l.refill_per_second)],
      ['shadow', yesNo(l.shadow)], ['burst_guard', yesNo(l.burst_guard)],
      ['overrides', text(l.overrides)], ['buckets_active', text(l.buckets_active)],
      ['tokens_min', text(l.tokens_min)], ['admitted_per_second', rate(l.admitted_per_second)],
      ['rejected_per_second', rate(l.rejected_per_second)], ['rejected_total', text(l.rejected_total)],
      ['drift', l.drift === true ? '<strong>drift</strong>' : 'no'],
    ];
    return '<tr data-limit="' + name + '"' + (l.drift === true ? ' class="alert"' : '') +
      '><th scope="row">' + name + '</th>' +
      cells.map(([field, value]) => '<td data-field="' + field + '">' + value + '</td>').join('') + '</tr>';
  }

  function limitsSection(s) {
    return '<section aria-labelledby="h-limits"><h2 id="h-limits">Limits</h2><div class="scroll" role="region" aria-labelledby="h-limits" tabindex="0"><table id="limits"><caption>Every limit of the running config; rates over the last 10 s, admitted in tokens taken</caption><thead><tr>' +
      LIMIT_COLUMNS.map((c) => '<th scope="col">' + c + '</th>').join('') +
      '</tr></thead><tbody>' + s.limits.map(limitRow).join('') + '</tbody></table></div></section>';
  }

  // A round upper bound for the chart's scale: 1, 2 or 5 times a power of ten.
  function niceMax(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= v);
  }

  function chart(h) {
    const pts = h.points;
    if (pts.length < 2) {
      return '<p class="muted">Collecting samples: the chart starts after three (one every ' + h.interval_ms / 1000 + ' s).</p>';
    }
    // One unit of the drawing to one CSS pixel, so that the labels keep their size on a phone.
    const W = Math.max(280, main.clientWidth - 20), H = 200, L = 48, R = 10, T = 10, B = 26;
    const peak = (k) => Math.max(...pts.map((p) => num(p[k])));
    const max = niceMax(Math.max(1, peak('admitted_per_second'), peak('rejected_per_second')));
    const t0 = pts[0].at_ms, span = Math.max(1, pts[pts.length - 1].at_ms - t0);
    const x = (t) => (L + (W - L - R) * (t - t0) / span).toFixed(1);
    const y = (v) => (T + (H - T - B) * (1 - num(v) / max)).toFixed(1);
    const line = (k) => pts.map((p) => x(p.at_ms) + ',' + y(p[k])).join(' ');
    let grid = '';
    for (const v of [0, max / 2, max]) {
      grid += '<line class="grid" x1="' + L + '" x2="' + (W - R) + '" y1="' + y(v) + '" y2="' + y(v) + '"/>' +
        '<text class="axis" x="' + (L - 6) + '" y="' + (num(y(v)) + 4) + '" text-anchor="end">' + v + '</text>';
    }
    const ago = span < 120000 ? Math.round(span / 1000) + ' s' : (span / 60000).toFixed(1) + ' min';
    const last = pts[pts.length - 1];
    const desc = 'Over the last ' + ago + ': admitted now ' + rate(last.admitted_per_second) +
      '/s, peak ' + rate(peak('admitted_per_second')) + '/s; rejected now ' + rate(last.rejected_per_second) +
      '/s, peak ' + rate(peak('rejected_per_second')) + '/s.';
    return '<svg viewBox="0 0 ' + W + ' ' + H + '" role="img" aria-labelledby="chart-title chart-desc">' +
      '<title id="chart-title">Requests admitted and rejected per second</title><desc id="chart-desc">' + desc + '</desc>' +
      grid + '<text class="axis" x="' + L + '" y="' + (H - 6) + '">' + ago + ' ago</text>' +
      '<text class="axis" x="' + (W - R) + '" y="' + (H - 6) + '" text-anchor="end">now</text>' +
      '<polyline class="admitted" points="' + line('admitted_per_second') + '"/>' +
      '<polyline class="rejected" points="' + line('rejected_per_second') + '"/></svg>' +
      '<ul class="legend"><li class="admitted">admitted/s</li><li class="rejected">rejected/s</li></ul>';
  }

  function trafficSection(s) {
    const h = s.history;
    return '<section aria-labelledby="h-traffic"><h2 id="h-traffic">Traffic</h2><figure><div id="chart" class="chart">' +
      chart(h) + '</div><figcaption>Requests admitted and rejected per second on this node, ' + h.points.length +
      ' points, one every ' + h.interval_ms / 1000 + ' s. Since the start: <span id="total-admitted">' +
      text(s.totals.admitted) + '</span> admitted, <span id="total-rejected">' + text(s.totals.rejected) +
      '</span> rejected.</figcaption></figure></section>';
  }

  function topTable(limit, answer) {
    if (!answer || !Array.isArray(answer.buckets)) return '<p class="muted">no data</p>';
    if (!answer.buckets.length) return '<p class="muted">No key rejected in the last minute.</p>';
    const name = esc(limit);
    return '<div class="scroll" role="region" tabindex="0" aria-label="Keys rejected most: ' + name +
      '"><table><caption>Keys of ' + name + ' rejected most in the last minute</caption><thead><tr>' +
      '<th scope="col">Key</th><th scope="col">Rejected (last minute)</th><th scope="col">Tokens</th><th scope="col">Capacity</th></tr></thead><tbody>' +
      answer.buckets.map((b) => '<tr><th scope="row"><code>' + esc(b.key) + '</code></th><td>' +
        text(b.rejected_last_minute) + '</td><td>' + text(b.tokens) + '</td><td>' + text(b.capacity) + '</td></tr>').join('') +
      '</tbody></table></div>';
  }

  function topSection(s, tops) {
    return '<section aria-labelledby="h-top"><h2 id="h-top">Keys rejected most</h2><p class="muted">Per limit, the five keys with the most rejections in the last minute, as fingerprints (as in the access log).</p>' +
      s.limits.map((l) => '<h3>' + esc(l.name) + '</h3><div class="top" data-top="' + esc(l.name) + '">' +
        topTable(l.name, tops[l.name]) + '</div>').join('') + '</section>';
  }

  function render(s, tops) {
    last = { s, tops };
    // Horizontal scroll positions survive the refresh (a table read on a phone stays put).
    const scrolled = Array.from(main.querySelectorAll('.scroll'), (e) => e.scrollLeft);
    document.body.dataset.view = 'status';
    document.title = 'tollgate ' + s.node.id + ' status';
    document.getElementById('node-name').textContent = s.node.id;
    main.innerHTML = alerts(s) + nodeSection(s.node) + redisSection(s.redis) + limitsSection(s) +
      trafficSection(s) + topSection(s, tops);
    main.querySelectorAll('.scroll').forEach((e, i) => { e.scrollLeft = scrolled[i] || 0; });
    updated.textContent = 'Updated ' + utc(s.now_ms) + ', every ' + EVERY_MS / 1000 + ' s';
  }

  function showLogin(message) {
    clearTimeout(timer);
    last = null;
    if (document.body.dataset.view !== 'login' || !document.getElementById('login')) {
      document.body.dataset.view = 'login';
      document.title = 'tollgate status: admin token required';
      updated.textContent = '';
      main.innerHTML = '<section aria-labelledby="h-login"><h2 id="h-login">Admin token required</h2>' +
        '<form id="login" class="login"><label for="token">Admin token</label>' +
        '<input id="token" name="token" type="password" autocomplete="current-password" required>' +
        '<button type="submit">Show status</button></form>' +
        '<p id="login-error" class="alert" role="alert" hidden></p></section>';
    }
    const error = document.getElementById('login-error');
    error.textContent = message;
    error.hidden = !message;
    document.getElementById('token').focus();
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const s = await getJson('/status');
      const answers = await Promise.all(s.limits.map((l) => topOf(l.name)));
      const tops = {};
      s.limits.forEach((l, i) => { tops[l.name] = answers[i]; });
      render(s, tops);
    } catch (e) {
      if (e instanceof Unauthorized) {
        const refused = token() !== null;
        setToken(null);
        showLogin(refused ? 'That token was refused.' : '');
        return;
      }
      updated.textContent = 'Update failed at ' + utc(Date.now()) + ' (' + e.message + '); trying again';
    }
    timer = setTimeout(refresh, EVERY_MS);
  }

  let resizing = false;
  window.addEventListener('resize', () => {
    if (resizing || !last) return;
    resizing = true;
    requestAnimationFrame(() => { resizing = false; render(last.s, last.tops); });
  });

  document.addEventListener('submit', (ev) => {
    if (ev.target.id !== 'login') return;
    ev.preventDefault();
    const t = ev.target.elements.token.value.trim();
    if (!t) return;
    setToken(t);
    refresh();
  });

  if (document.body.dataset.view === 'login' && token() === null) {
    document.getElementById('token').focus();
  } else {
    refresh();
  }
})();
