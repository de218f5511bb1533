// An app's channel auth endpoint, like Laravel's /broadcasting/auth, for the Rust
// tests: it signs with the `pusher` Node SDK's authorizeChannel.
//
//   node auth-server.js '{"key","secret","appId"?,"presence"?}'
//
// Listens on a free port of 127.0.0.1 and prints {"type":"listening","port"}; then,
// for each POST (form: socket_id, channel_name), one line {"type":"auth","socket_id",
// "channel"} and the SDK's answer, or 403 for channels starting with "refuse" after
// the prefix ("private-refuse…"). Exits when stdin closes.
const http = require('http');
const Pusher = require('pusher');
const a = JSON.parse(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const sdk = new Pusher({ appId: String(a.appId || '1'), key: a.key, secret: a.secret });

const server = http.createServer((req, res) => {
  let body = '';
  req.on('data', (chunk) => { body += chunk; });
  req.on('end', () => {
    const form = new URLSearchParams(body);
    const socketId = form.get('socket_id');
    const channel = form.get('channel_name') || '';
    out({ type: 'auth', socket_id: socketId, channel });
    if (/^(private-|presence-)refuse/.test(channel)) {
      res.writeHead(403, { 'content-type': 'application/json' });
      res.end('{"message":"forbidden"}');
      return;
    }
    try {
      const presence = channel.startsWith('presence-') ? a.presence : undefined;
      const auth = sdk.authorizeChannel(socketId, channel, presence);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(auth));
    } catch (e) {
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ message: String(e) }));
    }
  });
});
server.listen(0, '127.0.0.1', () => out({ type: 'listening', port: server.address().port }));
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
