// The `pusher` Node server SDK (pusher-http-node), driven by the Rust tests.
//
//   node sdk.js '{"appId","key","secret","host","port","ops":[{"op":…},…]}'
// runs each op in order and prints one JSON line per op: {"op", "result"} or
// {"op", "error", "status"?, "body"?}. Ops: authorizeChannel {socketId, channel,
// presence?}, authenticateUser {socketId, user}, trigger {channels, event, data,
// params?}, triggerBatch {batch}, get {path, params?}, post {path, body},
// sendToUser {userId, event, data}, terminateUserConnections {userId}, webhook {headers, body} → isValid(),
// webhookEvents {headers, body} → {valid: isValid(), events: getEvents()} (the events as
// the SDK reads them; null when it cannot read the body).
const Pusher = require('pusher');
const a = JSON.parse(process.argv[2]);
const pusher = new Pusher({
  appId: a.appId, key: a.key, secret: a.secret,
  host: a.host || '127.0.0.1', port: a.port || 80, useTLS: false, timeout: 5000,
});
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const reply = async (res) => ({ status: res.status, body: await res.text() });
(async () => {
  for (const op of a.ops) {
    try {
      let result;
      switch (op.op) {
        case 'authorizeChannel': result = pusher.authorizeChannel(op.socketId, op.channel, op.presence); break;
        case 'authenticateUser': result = pusher.authenticateUser(op.socketId, op.user); break;
        case 'trigger': result = await reply(await pusher.trigger(op.channels, op.event, op.data, op.params)); break;
        case 'triggerBatch': result = await reply(await pusher.triggerBatch(op.batch)); break;
        case 'get': result = await reply(await pusher.get({ path: op.path, params: op.params || {} })); break;
        case 'post': result = await reply(await pusher.post({ path: op.path, body: op.body })); break;
        case 'sendToUser': result = await reply(await pusher.sendToUser(op.userId, op.event, op.data)); break;
        case 'terminateUserConnections': result = await reply(await pusher.terminateUserConnections(op.userId)); break;
        case 'webhook': result = pusher.webhook({ headers: op.headers, rawBody: op.body }).isValid(); break;
        case 'webhookEvents': {
          const hook = pusher.webhook({ headers: op.headers, rawBody: op.body });
          result = { valid: hook.isValid(), events: hook.isBodyValid() ? hook.getEvents() : null };
          break;
        }
        default: throw new Error('unknown op ' + op.op);
      }
      out({ op: op.op, result });
    } catch (e) {
      out({ op: op.op, error: String((e && e.message) || e), status: e && e.status, body: e && e.body });
    }
  }
})();
