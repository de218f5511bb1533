// /back: run a scene or push free-form JSON, and show each result as text:
// "delivered: N" from the reply, or the error's message.
(function () {
  'use strict';

  var results = document.getElementById('results');
  var resultsEmpty = document.getElementById('results-empty');

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function report(what, ok, text) {
    resultsEmpty.hidden = true;
    var item = el('li', 'result ' + (ok ? 'ok' : 'err'));
    var now = new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
    item.appendChild(el('time', 'result-time', now));
    item.appendChild(el('span', 'result-what', what));
    item.appendChild(el('span', 'result-text', text));
    results.insertBefore(item, results.firstChild);
  }

  function outcome(what, reply) {
    if (reply.ok && typeof reply.body.delivered === 'number') {
      report(what, true, 'delivered: ' + reply.body.delivered);
    } else {
      var message = reply.body && reply.body.message ? reply.body.message : 'HTTP ' + reply.status;
      report(what, false, 'error ' + reply.status + ': ' + message);
    }
  }

  function failed(what) {
    return function (error) { report(what, false, 'network error: ' + error.message); };
  }

  function needToken(what) {
    if (Operator.token()) return false;
    report(what, false, 'error: type the API token first');
    Operator.focus();
    return true;
  }

  document.querySelectorAll('form.scene').forEach(function (form) {
    form.addEventListener('submit', function (e) {
      e.preventDefault();
      var func = form.dataset.func;
      if (needToken(func)) return;
      var query = new URLSearchParams();
      query.set('func', func);
      new FormData(form).forEach(function (value, name) { query.set(name, String(value)); });
      Operator.api('/?' + query.toString()).then(function (reply) { outcome(func, reply); }, failed(func));
    });
  });

  var kind = document.getElementById('push-kind');
  var name = document.getElementById('push-name');
  kind.addEventListener('change', function () { name.disabled = kind.value === 'all'; });

  document.getElementById('push-form').addEventListener('submit', function (e) {
    e.preventDefault();
    var what = kind.value === 'all' ? 'push to all' : 'push to ' + kind.value + ' ' + name.value.trim();
    if (needToken(what)) return;
    var message;
    try {
      message = JSON.parse(document.getElementById('push-message').value);
    } catch (error) {
      report(what, false, 'error: the message is not JSON (' + error.message + ')');
      return;
    }
    var body = { message: message };
    if (kind.value === 'all') body.all = true;
    else body[kind.value] = name.value.trim();
    Operator.api('/api/push', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    }).then(function (reply) { outcome(what, reply); }, failed(what));
  });

  document.getElementById('results-clear').addEventListener('click', function () {
    results.textContent = '';
    resultsEmpty.hidden = false;
  });
})();
