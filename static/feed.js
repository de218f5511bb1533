// /home and /list: show every message pushed to this page, newest first.
// The client token (and optional uid) come from this page's own URL; messages are
// inserted with textContent only, so a pushed "<img onerror=...>" shows as text.
(function () {
  'use strict';

  var MAX_ENTRIES = 200;
  var params = new URLSearchParams(window.location.search);
  var page = document.getElementById('feed-page').dataset.page;
  var token = params.get('token');
  var uid = params.get('uid');
  var badge = document.getElementById('state');
  var feed = document.getElementById('feed');
  var empty = document.getElementById('empty');
  var count = document.getElementById('count');
  var received = 0;
  var everOpen = false;

  // Keep token and uid when moving between /home and /list.
  document.querySelectorAll('a[data-keep-query]').forEach(function (link) {
    link.search = window.location.search;
  });

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function showState(state, note) {
    badge.dataset.state = state;
    badge.textContent = note ? state + ' · ' + note : state;
  }

  // The line a person reads: the seeds' {"message": "..."} text, else the JSON.
  function headline(data) {
    if (typeof data === 'string') return data;
    if (data && typeof data === 'object' && typeof data.message === 'string') return data.message;
    return JSON.stringify(data);
  }

  function add(data) {
    received += 1;
    count.textContent = String(received);
    empty.hidden = true;
    var entry = el('li', 'entry');
    var now = new Date();
    var time = el('time', 'entry-time', now.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false }));
    time.dateTime = now.toISOString();
    entry.appendChild(time);
    var body = el('div', 'entry-body');
    body.appendChild(el('div', 'entry-text', headline(data)));
    if (data !== null && typeof data === 'object') {
      body.appendChild(el('code', 'entry-raw', JSON.stringify(data)));
    }
    entry.appendChild(body);
    feed.insertBefore(entry, feed.firstChild);
    while (feed.children.length > MAX_ENTRIES) feed.removeChild(feed.lastChild);
  }

  var who = document.getElementById('identity');
  if (uid) {
    who.textContent = 'Messages pushed to page ' + page + ' or to user ' + uid + ' appear here as they arrive.';
  }

  if (!token) {
    showState('closed', 'no token');
    document.getElementById('hint').hidden = false;
    empty.hidden = true;
    return;
  }

  var client = new Scenecast({ page: page, token: token, uid: uid || undefined });
  var unreachable = document.getElementById('unreachable');
  client.addEventListener('state', function (e) {
    showState(e.detail.state);
    if (e.detail.state === 'open') {
      everOpen = true;
      unreachable.hidden = true;
    }
  });
  client.addEventListener('retry', function (e) {
    showState('closed', 'retry in ' + Math.max(1, Math.round(e.detail.delay / 1000)) + ' s');
    // A refused token looks like a dead server to a browser (no status is exposed).
    if (!everOpen && e.detail.attempt >= 3) unreachable.hidden = false;
  });
  client.addEventListener('message', function (e) { add(e.detail.data); });
  // After a reconnect: say what the server replayed, or that the feed may have a hole
  // (the server's history no longer covers the time away, or it restarted). The
  // warning stays until a reload: the lost messages stay lost.
  var recoveredNote = document.getElementById('recovered');
  var missedNote = document.getElementById('missed');
  client.addEventListener('recovered', function (e) {
    if (!e.detail.recovered) {
      missedNote.hidden = false;
      recoveredNote.hidden = true;
      return;
    }
    var n = e.detail.replayed;
    recoveredNote.textContent = n + (n === 1 ? ' missed message recovered' : ' missed messages recovered');
    recoveredNote.hidden = n === 0;
  });
  showState(client.state);
  window.scenecastClient = client;
})();
