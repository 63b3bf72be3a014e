(function () {
  'use strict';
  var NS = 'http://www.w3.org/2000/svg';
  var W = 300, H = 90, PAD = 4;
  function $(id) { return document.getElementById(id); }
  function fig(v) {
    if (v === null || v === undefined) return '–';
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  }
  function secs(v) {
    if (v === null || v === undefined) return '–';
    if (v === 0) return '0 s';
    return (v < 10 ? v.toFixed(2).replace(/0$/, '') : v.toFixed(0)) + ' s';
  }
  function set(id, text) { var e = $(id); if (e && e.textContent !== text) e.textContent = text; }
  function el(name, attrs) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  // chart draws values (with their times t, in ms) over the last window ms,
  // scaled to the larger of their maximum and cap (a dashed line), if any.
  function chart(svg, ts, values, cap, windowMs) {
    if (!svg) return;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var top = Math.max(1, cap || 0);
    values.forEach(function (v) { if (v !== null && v > top) top = v; });
    top *= 1.15;
    var end = ts.length ? ts[ts.length - 1] : 0, start = end - windowMs;
    function x(t) { return (PAD + (W - 2 * PAD) * (t - start) / windowMs).toFixed(1); }
    function y(v) { return (H - PAD - (H - 2 * PAD) * v / top).toFixed(1); }
    var label = el('text', { x: 3, y: 11, 'font-size': 10, fill: '#8a93a3' });
    label.textContent = fig(Math.round(top));
    svg.appendChild(label);
    if (cap) svg.appendChild(el('line', { x1: PAD, x2: W - PAD, y1: y(cap), y2: y(cap), stroke: '#b3261e', 'stroke-dasharray': '4 3' }));
    var pts = [];
    for (var i = 0; i < ts.length; i++) if (values[i] !== null) pts.push(x(ts[i]) + ',' + y(values[i]));
    svg.appendChild(el('polyline', { points: pts.join(' '), fill: 'none', stroke: '#2a6fdb', 'stroke-width': 2, 'data-points': pts.length }));
  }
  function render(s) {
    var err = $('error');
    err.hidden = !s.error;
    set('error-text', s.error || '');
    set('error-age', s.sampled ? secs(s.sample_age_seconds) + ' ago' : 'never');
    set('sampled', (s.sampled ? 'sampled ' + secs(s.sample_age_seconds) + ' ago' : 'no sample yet') +
      ', every ' + secs(s.interval_seconds) + ' from Redis, by any replica');
    var windowMs = 60 * s.interval_seconds * 1000;
    s.budgets.forEach(function (b, i) {
      var p = b.samples.length ? b.samples[b.samples.length - 1] : {};
      set('b' + i + '-leases', fig(p.leases));
      set('b' + i + '-queue', fig(p.queue));
      set('b' + i + '-tokens', fig(p.tokens));
      set('b' + i + '-next', secs(p.next_token_seconds));
      set('b' + i + '-grants', fig(b.grants_per_second_1m));
      set('b' + i + '-nreplicas', fig(p.replicas));
      set('b' + i + '-replicas', b.replicas.length ? b.replicas.join(', ') : 'none');
      $('b' + i + '-nogrants').hidden = b.grants_counted;
      var ts = b.samples.map(function (q) { return q.t; });
      function series(k) { return b.samples.map(function (q) { return q[k] === undefined ? null : q[k]; }); }
      chart($('b' + i + '-chart-leases'), ts, series('leases'), b.concurrency, windowMs);
      chart($('b' + i + '-chart-queue'), ts, series('queue'), 0, windowMs);
      chart($('b' + i + '-chart-grants'), ts, series('grants_per_second'), b.rate_per_second, windowMs);
    });
  }
  function poll() {
    fetch('status.json', { cache: 'no-store' }).then(function (r) {
      if (!r.ok) throw new Error('HTTP ' + r.status);
      return r.json();
    }).then(function (s) {
      $('conn').hidden = true;
      render(s);
    }).catch(function (e) {
      set('conn', 'This page cannot reach the gateway: ' + e.message);
      $('conn').hidden = false;
    }).then(function () { setTimeout(poll, 1000); });
  }
  poll();
})();
