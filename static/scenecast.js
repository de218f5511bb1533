/*!
 * scenecast.js — the browser client for a scenecast server. No dependencies;
 * load it with a plain tag: <script src="/static/scenecast.js"></script>
 *
 *   const sc = new Scenecast({
 *     page: 'home',                 // the page (scene) this tab shows
 *     token: 'demo-client-token',   // a client token (auth.client_tokens), never an API token
 *     uid: '42',                    // optional: receive pushes sent to this user id
 *     onMessage(data, raw) { ... }, // data: the parsed JSON (or the text when not JSON)
 *     onState(state, info) { ... }, // 'connecting' | 'open' | 'closed'
 *   });
 *   sc.addEventListener('message', (e) => e.detail.data);  // the same, as DOM events
 *   sc.addEventListener('state', (e) => e.detail.state);
 *   sc.state;        // current state
 *   sc.send({...});  // send a frame (objects are JSON-encoded); false when not open
 *   sc.close();      // close for good: no more reconnects
 *
 * What it does for you:
 * - connects to the WebSocket of the page's own origin (ws:// or wss:// following
 *   location.protocol) at `path` (default '/'), or to `url` when given;
 * - reconnects after any close or failure with exponential backoff and jitter:
 *   the n-th retry waits a random time in [d/2, d] with d = min(maxDelay, minDelay * 2^n);
 *   the backoff resets once a connection has stayed open for `stableAfter` ms;
 * - never holds two sockets at once: a new socket is opened only after the old one
 *   is closed or abandoned (its handlers removed first);
 * - sends {"type":"ping"} every `heartbeat` ms; when nothing at all (message or pong)
 *   arrives for `deadAfter` ms the socket is taken as dead (sleeping laptop, lost
 *   network) and replaced; the server's pongs are not passed to onMessage;
 * - reconnects at once when the browser comes back online.
 *
 * Options (all optional but page/token): path, url, minDelay (500), maxDelay (15000),
 * stableAfter (5000), heartbeat (25000), deadAfter (2.5 x heartbeat), autoConnect (true).
 */
(function (root) {
  'use strict';

  var STATES = ['connecting', 'open', 'closed'];

  function socketUrl(options) {
    var base = options.url;
    if (!base) {
      var scheme = root.location.protocol === 'https:' ? 'wss:' : 'ws:';
      base = scheme + '//' + root.location.host + (options.path || '/');
    }
    var url = new URL(base, root.location.href);
    ['page', 'token', 'uid', 'session'].forEach(function (name) {
      if (options[name] !== undefined && options[name] !== null && options[name] !== '') {
        url.searchParams.set(name, String(options[name]));
      }
    });
    return url.toString();
  }

  function isPong(data) {
    return data !== null && typeof data === 'object' && data.type === 'pong'
      && Object.keys(data).length === 1;
  }

  class Scenecast extends EventTarget {
    constructor(options) {
      super();
      this.options = Object.assign({
        path: '/',
        minDelay: 500,
        maxDelay: 15000,
        stableAfter: 5000,
        heartbeat: 25000,
        autoConnect: true,
      }, options || {});
      if (!this.options.deadAfter) {
        this.options.deadAfter = Math.round(this.options.heartbeat * 2.5);
      }
      this.state = 'closed';
      this.attempt = 0;      // failed connects since the last stable connection
      this.socket = null;
      this.stopped = false;
      this.timers = {};
      this._online = () => { if (!this.stopped && this.state !== 'open') this.connect(); };
      if (this.options.autoConnect) this.connect();
    }

    /** Opens a socket now unless one is open or opening (cancels a pending retry). */
    connect() {
      this.stopped = false;
      this._clear('retry');
      root.addEventListener('online', this._online); // no-op when already listening
      if (this.socket) return;
      var socket;
      try {
        socket = new WebSocket(socketUrl(this.options));
      } catch (error) {
        this._setState('closed', { error: String(error) });
        this._scheduleRetry();
        return;
      }
      this.socket = socket;
      this._setState('connecting', { attempt: this.attempt });
      socket.onopen = () => {
        this._setState('open', {});
        this._alive();
        this._every('heartbeat', this.options.heartbeat, () => this.send({ type: 'ping' }));
        this._after('stable', this.options.stableAfter, () => { this.attempt = 0; });
      };
      socket.onmessage = (event) => {
        this._alive();
        var data = event.data;
        if (typeof data === 'string') {
          try { data = JSON.parse(data); } catch (_) { /* plain text stays text */ }
        }
        if (isPong(data)) return;
        this._emit('message', { data: data, raw: event.data });
        if (this.options.onMessage) this.options.onMessage(data, event.data);
      };
      socket.onclose = (event) => this._lost(socket, { code: event.code, reason: event.reason });
      // An error is always followed by a close event; nothing to do twice.
      socket.onerror = () => {};
    }

    /** Sends a frame; objects are JSON-encoded. Returns false when not open. */
    send(frame) {
      if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
      this.socket.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
      return true;
    }

    /** Closes for good: no reconnect until connect() is called again. */
    close() {
      this.stopped = true;
      Object.keys(this.timers).forEach((name) => this._clear(name));
      var socket = this._detach();
      if (socket) socket.close(1000, 'client closed');
      this._setState('closed', { code: 1000 });
      root.removeEventListener('online', this._online);
    }

    // The current socket went away (closed, failed, or found dead).
    _lost(socket, info) {
      if (socket !== this.socket) return; // a stale socket we already abandoned
      this._detach();
      this._setState('closed', info);
      if (!this.stopped) this._scheduleRetry();
    }

    // Forgets the current socket and silences it; returns it.
    _detach() {
      var socket = this.socket;
      this.socket = null;
      ['heartbeat', 'stable', 'dead'].forEach((name) => this._clear(name));
      if (socket) {
        socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      }
      return socket;
    }

    _scheduleRetry() {
      var ceiling = Math.min(this.options.maxDelay, this.options.minDelay * Math.pow(2, this.attempt));
      var delay = Math.round(ceiling / 2 + Math.random() * ceiling / 2);
      this.attempt += 1;
      this._emit('retry', { delay: delay, attempt: this.attempt });
      this._after('retry', delay, () => this.connect());
    }

    // Something arrived: push the dead-socket deadline back.
    _alive() {
      this._after('dead', this.options.deadAfter, () => {
        var socket = this.socket;
        if (!socket) return;
        this._lost(socket, { code: 4000, reason: 'no heartbeat answer' });
        try { socket.close(4000, 'no heartbeat answer'); } catch (_) { /* already closing */ }
      });
    }

    _setState(state, info) {
      if (STATES.indexOf(state) < 0) return;
      var changed = this.state !== state;
      this.state = state;
      if (!changed) return;
      var detail = Object.assign({ state: state }, info);
      this._emit('state', detail);
      this._emit(state, detail);
      if (this.options.onState) this.options.onState(state, detail);
    }

    _emit(type, detail) {
      this.dispatchEvent(new CustomEvent(type, { detail: detail }));
    }

    _after(name, ms, fn) {
      this._clear(name);
      this.timers[name] = { id: setTimeout(() => { delete this.timers[name]; fn(); }, ms), repeat: false };
    }

    _every(name, ms, fn) {
      this._clear(name);
      this.timers[name] = { id: setInterval(fn, ms), repeat: true };
    }

    _clear(name) {
      var timer = this.timers[name];
      if (!timer) return;
      (timer.repeat ? clearInterval : clearTimeout)(timer.id);
      delete this.timers[name];
    }
  }

  Scenecast.STATES = STATES.slice();
  root.Scenecast = Scenecast;
})(typeof window !== 'undefined' ? window : this);
