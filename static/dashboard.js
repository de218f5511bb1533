// /dashboard: reads GET /api/stats every second and shows connections per page,
// totals, and pushes per second computed from successive "pushes" counters.
(function () {
  'use strict';

  var INTERVAL = 1000;
  var HISTORY = 60;
  var $ = function (id) { return document.getElementById(id); };
  var previous = null;   // {node, pushes, at}
  var rates = [];
  var timer = null;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function clock(date) {
    return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  }

  function setPolling(state, text) {
    $('poll-state').dataset.state = state;
    $('poll-state').textContent = text;
  }

  // The counter is per node: a rate only makes sense between two answers of the
  // same node with a counter that did not go back (restart).
  function rate(stats, at) {
    var value = null;
    if (previous && previous.node === stats.node && stats.pushes >= previous.pushes && at > previous.at) {
      value = (stats.pushes - previous.pushes) / ((at - previous.at) / 1000);
    }
    previous = { node: stats.node, pushes: stats.pushes, at: at };
    return value;
  }

  function drawSpark() {
    var max = Math.max.apply(null, rates.concat([1]));
    var step = 600 / (HISTORY - 1);
    var offset = HISTORY - rates.length;
    var points = rates.map(function (r, i) {
      return ((offset + i) * step).toFixed(1) + ',' + (78 - (r / max) * 74).toFixed(1);
    });
    $('spark-line').setAttribute('points', points.join(' '));
    if (points.length > 1) {
      var first = (offset * step).toFixed(1);
      $('spark-area').setAttribute('points', first + ',79 ' + points.join(' ') + ' 600,79');
    }
    $('spark').dataset.samples = String(rates.length);
  }

  function show(stats, at) {
    var r = rate(stats, at);
    if (r !== null) {
      rates.push(r);
      if (rates.length > HISTORY) rates.shift();
      drawSpark();
    }
    $('total').textContent = String(stats.connections);
    $('rate').textContent = r === null ? '–' : (r >= 10 ? Math.round(r) : r.toFixed(1)).toString();
    $('page-total').textContent = String(stats.pages.length);
    $('nodes').textContent = String(stats.nodes);
    $('scope').textContent = stats.cluster_wide ? 'cluster-wide' : 'this node only';
    $('node').textContent = 'node ' + stats.node + ' · ' + stats.node_connections + ' local' +
      (stats.node_pusher_connections ? ' (' + stats.node_pusher_connections + ' Pusher)' : '');

    var pages = stats.pages.slice().sort(function (a, b) {
      return b.connections - a.connections || String(a.page).localeCompare(String(b.page));
    });
    var most = Math.max.apply(null, pages.map(function (p) { return p.connections; }).concat([1]));
    var body = $('pages-body');
    body.textContent = '';
    pages.forEach(function (p) {
      var row = el('tr');
      row.dataset.page = p.page;
      row.appendChild(el('td', 'page-name', p.page));
      row.appendChild(el('td', 'num page-count', String(p.connections)));
      var cell = el('td', 'bar-cell');
      var bar = el('span', 'bar');
      bar.style.width = Math.max(2, Math.round((p.connections / most) * 100)) + '%';
      cell.appendChild(bar);
      row.appendChild(cell);
      body.appendChild(row);
    });
    $('pages-empty').hidden = pages.length > 0;
    $('pages').hidden = pages.length === 0;
    $('stats-status').textContent = 'Updated ' + clock(new Date(at)) + ' from /api/stats.';
  }

  function poll() {
    timer = null;
    if (!Operator.token()) {
      setPolling('idle', 'paused');
      $('stats-status').textContent = 'Enter the API token to read /api/stats every second.';
      return;
    }
    Operator.api('/api/stats').then(function (reply) {
      if (reply.ok) {
        setPolling('open', 'live');
        show(reply.body, Date.now());
      } else {
        setPolling('closed', 'error');
        $('stats-status').textContent = 'Error ' + reply.status + ': ' + (reply.body.message || 'no answer');
      }
    }, function (error) {
      setPolling('connecting', 'retrying');
      $('stats-status').textContent = 'Server unreachable (' + error.message + '); retrying.';
    }).then(schedule, schedule);
  }

  function schedule() {
    if (timer === null) timer = setTimeout(poll, INTERVAL);
  }

  Operator.onToken(function () {
    if (timer !== null) clearTimeout(timer);
    previous = null;
    poll();
  });
  $('pages').hidden = true;
  poll();
})();
