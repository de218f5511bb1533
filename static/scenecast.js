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
 *     onRecovered(info) { ... },    // after a reconnect: { recovered, replayed }
 *   });
 *   sc.addEventListener('message', (e) => e.detail.data);  // the same, as DOM events
 *   sc.addEventListener('state', (e) => e.detail.state);
 *   sc.addEventListener('recovered', (e) => e.detail.recovered && e.detail.replayed);
 *   sc.addEventListener('welcome', (e) => e.detail.conn);  // each connect, recover mode
 *   sc.state;        // current state
 *   sc.conn;         // this connection's id (welcome frame; null while away), for `exclude`
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
 * - reconnects at once when the browser comes back online;
 * - recovers what was pushed while it was away (unless `recover: false`): it connects
 *   with `recover=1`, keeps the epoch, the offset of the last push it handed over and
 *   its connection id from the server's frames, and reconnects with
 *   `recover=1&epoch=E&since=O&prev=CONN`. The server then replays the missed pushes
 *   (they reach onMessage like live ones, in order, each once) and says how it went:
 *   a `recovered` event with detail { recovered: true|false, replayed: N }.
 *   recovered:false means pushes may have been missed for good (history too short,
 *   server restarted): reload the data the page shows. No event on a first connect.
 *   The envelopes ({"type":"welcome"|"push"|"recovered",...}) stay inside this file:
 *   onMessage and 'message' get each push's payload exactly as with `recover: false`,
 *   which is the raw protocol of the seeds' clients (frames are the payloads as is);
 *   a push at or before the last offset handed over is dropped as a duplicate (one
 *   without an offset, pushed while Redis was unreachable, is passed on). A
 *   server without recovery answers recover=1 with raw frames (no welcome first):
 *   they are passed on as they are.
 *
 * Options (all optional but page/token): path, url, minDelay (500), maxDelay (15000),
 * stableAfter (5000), heartbeat (25000), deadAfter (2.5 x heartbeat), autoConnect (true),
 * recover (true).
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

  function isFrame(data, type) {
    return data !== null && typeof data === 'object' && !Array.isArray(data) && data.type === type;
  }

  // Offsets are decimal strings (the server zero-pads them to a fixed width, so they
  // sort as text); comparing by length first also orders unpadded ones.
  function offsetAfter(a, b) {
    if (typeof a !== 'string' || typeof b !== 'string') return true;
    if (a.length !== b.length) return a.length > b.length;
    return a > b;
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
        recover: true,
      }, options || {});
      if (!this.options.deadAfter) {
        this.options.deadAfter = Math.round(this.options.heartbeat * 2.5);
      }
      this.state = 'closed';
      this.attempt = 0;      // failed connects since the last stable connection
      this.socket = null;
      this.stopped = false;
      this.timers = {};
      // Recovery position (see the header): the server's epoch, the offset of the last
      // push handed over, and the current connection's id; null until a welcome.
      this.epoch = null;
      this.offset = null;
      this.conn = null;
      this.prevConn = null;  // id of the connection before this one, sent as `prev`
      this._link = null;     // per socket: { enveloped, first, resumed, welcomeOffset }
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
        socket = new WebSocket(this._url());
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
        if (this._link && this._envelope(data)) return;
        this._deliver(data, event.data, {});
      };
      socket.onclose = (event) => this._lost(socket, { code: event.code, reason: event.reason });
      // An error is always followed by a close event; nothing to do twice.
      socket.onerror = () => {};
    }

    // The socket URL; with recovery, the position to resume from when there is one.
    _url() {
      var url = new URL(socketUrl(this.options));
      this._link = null;
      if (!this.options.recover) return url.toString();
      url.searchParams.set('recover', '1');
      var resumed = this.epoch !== null && this.offset !== null;
      if (resumed) {
        url.searchParams.set('epoch', this.epoch);
        url.searchParams.set('since', this.offset);
      }
      if (this.prevConn) url.searchParams.set('prev', this.prevConn);
      this._link = { enveloped: false, first: true, resumed: resumed, welcomeOffset: null };
      return url.toString();
    }

    // Reads one frame of a recover=1 socket; true when it was an envelope handled here.
    // Only a socket whose first frame is a welcome speaks envelopes (a server without
    // recovery sends raw payloads, which then go to onMessage untouched).
    _envelope(data) {
      var link = this._link;
      var first = link.first;
      link.first = false;
      if (first && isFrame(data, 'welcome') && typeof data.conn === 'string') {
        link.enveloped = true;
        link.welcomeOffset = typeof data.offset === 'string' ? data.offset : null;
        this.conn = data.conn;
        this.prevConn = data.conn;
        if (this.epoch !== data.epoch || !link.resumed) {
          // A first connect, or another history (server restarted): start from now.
          // A resumed one keeps its offset until the replay or `recovered:false`.
          this.epoch = typeof data.epoch === 'string' ? data.epoch : null;
          this.offset = link.welcomeOffset;
        }
        this._emit('welcome', { conn: data.conn, epoch: data.epoch, offset: data.offset });
        return true;
      }
      if (!link.enveloped) return false;
      if (isFrame(data, 'push')) {
        // A push at or before the last one handed over is one we already have.
        if (this.offset !== null && !offsetAfter(data.offset, this.offset)) return true;
        if (typeof data.offset === 'string') this.offset = data.offset;
        var payload = data.data;
        var raw = typeof payload === 'string' ? payload : JSON.stringify(payload);
        this._deliver(payload, raw, { offset: data.offset });
        return true;
      }
      if (isFrame(data, 'recovered')) {
        var recovered = data.recovered === true;
        if (!recovered && link.welcomeOffset !== null) {
          // Nothing was replayed: live pushes follow the welcome's position.
          this.offset = link.welcomeOffset;
        }
        // A first connect has nothing to recover: no event (a server may still say so).
        if (!link.resumed) return true;
        var info = { recovered: recovered, replayed: Number(data.replayed) || 0 };
        this._emit('recovered', info);
        if (this.options.onRecovered) this.options.onRecovered(info);
        return true;
      }
      return false;
    }

    // Hands one push's payload to the page, the same way with or without recovery.
    _deliver(data, raw, extra) {
      this._emit('message', Object.assign({ data: data, raw: raw }, extra));
      if (this.options.onMessage) this.options.onMessage(data, raw);
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
      this.conn = null; // the id dies with its socket (prevConn keeps it for `prev`)
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
