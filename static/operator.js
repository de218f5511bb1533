// The operator's API token for /back and /dashboard: typed into the page, kept in
// this tab's sessionStorage, sent as "Authorization: Bearer". Never in a URL.
(function () {
  'use strict';

  var KEY = 'scenecast.apiToken';
  var input = document.getElementById('api-token');
  var status = document.getElementById('token-status');
  var listeners = [];

  function read() {
    try { return window.sessionStorage.getItem(KEY) || ''; } catch (_) { return ''; }
  }

  function write(value) {
    try {
      if (value) window.sessionStorage.setItem(KEY, value);
      else window.sessionStorage.removeItem(KEY);
    } catch (_) { /* storage disabled: the token lives in the field only */ }
  }

  function token() { return input.value.trim(); }

  function changed() {
    write(token());
    status.textContent = token()
      ? 'Token kept in this tab only; closing the tab forgets it.'
      : 'The server never writes an API token into a page; type one from auth.api_tokens.';
    listeners.forEach(function (fn) { fn(token()); });
  }

  input.value = read();
  input.addEventListener('input', changed);
  document.getElementById('token-form').addEventListener('submit', function (e) { e.preventDefault(); });
  document.getElementById('token-forget').addEventListener('click', function () {
    input.value = '';
    changed();
    input.focus();
  });

  // fetch() with the token; resolves to {ok, status, body} where body is the parsed
  // JSON reply (the server answers JSON on success and on every error).
  function api(path, init) {
    init = Object.assign({}, init || {});
    init.headers = Object.assign({ Authorization: 'Bearer ' + token() }, init.headers || {});
    init.cache = 'no-store';
    return fetch(path, init).then(function (response) {
      return response.text().then(function (text) {
        var body;
        try { body = JSON.parse(text); } catch (_) { body = { message: text || response.statusText }; }
        return { ok: response.ok, status: response.status, body: body };
      });
    });
  }

  window.Operator = {
    token: token,
    onToken: function (fn) { listeners.push(fn); },
    api: api,
    focus: function () { input.focus(); },
  };
})();
