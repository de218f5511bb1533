// laravel-echo 2.5 (Pusher broadcaster, on pusher-js 8.6) under Node, driven by the
// Rust tests. Same argument as pusher-js.js: '{"key","host","port","secret"?,
// "appId"?,"presence"?,"user"?,"authEndpoint"?,"options"?}' ("secret": channels are
// authorized in-process by the `pusher` Node SDK).
//
// Commands on stdin, one JSON object a line:
//   {"cmd":"channel"|"private"|"join","channel","event"?}  Echo.channel(c) / .private(c) /
//        .join(c), then .listen(event) when given (a leading "." skips Echo's
//        App.Events namespace, as in Laravel), .subscribed(), .error(), and for join
//        .here()/.joining()/.leaving();
//   {"cmd":"whisper","channel","event","data"}  Echo.private(c).whisper(event, data);
//   {"cmd":"leave","channel"}; {"cmd":"socket_id"}; {"cmd":"exit"}.
// Output lines: {"type":"connected","socket_id"}, {"type":"subscribed","channel"},
// {"type":"error","channel","error"}, {"type":"listen","channel","event","data"},
// {"type":"here"|"joining"|"leaving","channel","members"|"member"},
// {"type":"socket_id","socket_id"}.
import readline from 'node:readline';
import Pusher from 'pusher-js';
import PusherServer from 'pusher';
import Echo from 'laravel-echo';

const a = JSON.parse(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const options = {
  broadcaster: 'pusher',
  key: a.key,
  cluster: 'scenecast',
  wsHost: a.host || '127.0.0.1',
  wsPort: a.port,
  forceTLS: false,
  enabledTransports: ['ws'],
  disableStats: true,
  Pusher,
};
if (a.secret) {
  const server = new PusherServer({ appId: String(a.appId || '1'), key: a.key, secret: a.secret });
  options.channelAuthorization = {
    customHandler: ({ socketId, channelName }, callback) => {
      try {
        const presence = channelName.startsWith('presence-') ? a.presence : undefined;
        callback(null, server.authorizeChannel(socketId, channelName, presence));
      } catch (e) { callback(e, null); }
    },
  };
} else if (a.authEndpoint) {
  options.authEndpoint = a.authEndpoint;
}
Object.assign(options, a.options || {});
const echo = new Echo(options);
echo.connector.pusher.connection.bind('connected', () => out({ type: 'connected', socket_id: echo.socketId() }));

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const c = JSON.parse(line);
  const name = c.channel;
  switch (c.cmd) {
    case 'channel':
    case 'private':
    case 'join': {
      const channel = c.cmd === 'channel' ? echo.channel(name) : c.cmd === 'private' ? echo.private(name) : echo.join(name);
      channel.subscribed(() => out({ type: 'subscribed', channel: name }));
      channel.error((error) => out({ type: 'error', channel: name, error }));
      if (c.event) channel.listen(c.event, (data) => out({ type: 'listen', channel: name, event: c.event, data }));
      if (c.cmd === 'join') {
        channel.here((members) => out({ type: 'here', channel: name, members }));
        channel.joining((member) => out({ type: 'joining', channel: name, member }));
        channel.leaving((member) => out({ type: 'leaving', channel: name, member }));
      }
      break;
    }
    case 'whisper': echo.private(name).whisper(c.event, c.data); break;
    case 'leave': echo.leave(name); break;
    case 'socket_id': out({ type: 'socket_id', socket_id: echo.socketId() }); break;
    case 'exit': echo.disconnect(); process.exit(0);
    default: out({ type: 'unknown_command', cmd: c.cmd });
  }
});
lines.on('close', () => { echo.disconnect(); process.exit(0); });
