// A pusher-js 8 client under Node, driven by the Rust tests (tests/it/common/clients.rs).
//
//   node pusher-js.js '{"key","host","port", "secret"?, "appId"?, "presence"?, "user"?,
//                       "authEndpoint"?, "options"?}'
//
// With "secret", subscriptions and sign-in are authorized in-process by the `pusher`
// Node SDK (authorizeChannel with "presence" as the presence data on presence-
// channels, authenticateUser with "user"), as an app's auth endpoint would; with
// "authEndpoint", pusher-js POSTs to it as in a browser. "options" are merged into
// pusher-js's options.
//
// Commands, one JSON object per stdin line: {"cmd":"subscribe","channel"},
// {"cmd":"unsubscribe","channel"}, {"cmd":"trigger","channel","event","data"},
// {"cmd":"members","channel"}, {"cmd":"signin"}, {"cmd":"disconnect"}, {"cmd":"exit"}.
// Output, one JSON line each: {"type":"state","previous","current"},
// {"type":"connected","socket_id"}, {"type":"connection_error","error"},
// {"type":"event","channel","event","data","user_id"?} (every channel event, the
// pusher:subscription_* and pusher:member_* ones included),
// {"type":"user_event","event","data"}, {"type":"signed_in","user_data"},
// {"type":"triggered","ok"}, {"type":"members","count","me","ids"}.
const readline = require('readline');
const Pusher = require('pusher-js');
const a = JSON.parse(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const options = {
  cluster: 'scenecast', // pusher-js 8 requires one; wsHost/wsPort take precedence
  wsHost: a.host || '127.0.0.1',
  wsPort: a.port,
  forceTLS: false,
  enabledTransports: ['ws'],
  disableStats: true,
};
if (a.secret) {
  const Server = require('pusher');
  const server = new Server({ appId: String(a.appId || '1'), key: a.key, secret: a.secret });
  options.channelAuthorization = {
    customHandler: ({ socketId, channelName }, callback) => {
      try {
        const presence = channelName.startsWith('presence-') ? a.presence : undefined;
        callback(null, server.authorizeChannel(socketId, channelName, presence));
      } catch (e) { callback(e, null); }
    },
  };
  options.userAuthentication = {
    customHandler: ({ socketId }, callback) => {
      try { callback(null, server.authenticateUser(socketId, a.user)); } catch (e) { callback(e, null); }
    },
  };
} else if (a.authEndpoint) {
  options.channelAuthorization = { endpoint: a.authEndpoint, transport: 'ajax' };
}
Object.assign(options, a.options || {});

const pusher = new Pusher(a.key, options);
pusher.connection.bind('state_change', (s) => out({ type: 'state', previous: s.previous, current: s.current }));
pusher.connection.bind('connected', () => out({ type: 'connected', socket_id: pusher.connection.socket_id }));
pusher.connection.bind('error', (e) => out({ type: 'connection_error', error: (e && (e.data || e.error)) || String(e) }));
pusher.user.bind_global((event, data) => out({ type: 'user_event', event, data }));

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const c = JSON.parse(line);
  switch (c.cmd) {
    case 'subscribe': {
      const channel = pusher.subscribe(c.channel);
      // pusher-js hands global callbacks (event, data) only; the metadata (the
      // sender's user_id on presence channels) is passed to emit, so keep it there.
      let meta = null;
      const emit = channel.emit.bind(channel);
      channel.emit = (event, data, metadata) => {
        meta = metadata;
        try { return emit(event, data, metadata); } finally { meta = null; }
      };
      channel.bind_global((event, data) => {
        const line = { type: 'event', channel: c.channel, event, data };
        if (meta && meta.user_id) line.user_id = meta.user_id;
        out(line);
      });
      break;
    }
    case 'unsubscribe': pusher.unsubscribe(c.channel); break;
    case 'trigger': out({ type: 'triggered', ok: pusher.channel(c.channel).trigger(c.event, c.data) }); break;
    case 'members': {
      const members = pusher.channel(c.channel).members;
      const ids = [];
      members.each((m) => ids.push(m.id));
      out({ type: 'members', count: members.count, me: members.me, ids });
      break;
    }
    case 'signin':
      pusher.signin();
      pusher.user.signinDonePromise.then(() => out({ type: 'signed_in', user_data: pusher.user.user_data }));
      break;
    case 'disconnect': pusher.disconnect(); break;
    case 'exit': pusher.disconnect(); process.exit(0);
    default: out({ type: 'unknown_command', cmd: c.cmd });
  }
});
lines.on('close', () => { pusher.disconnect(); process.exit(0); });
