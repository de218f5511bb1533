// Runs pusher-js's own Protocol (decodeMessage, processHandshake, getCloseAction)
// on frames the Rust tests encode. The bundle does not export Protocol, so its
// source is cut out of pusher-js's Node build by its marker comment and evaluated:
// the code under test is pusher-js's, byte for byte.
//
//   node protocol.js '{"frames":["<text frame>",…],"codes":[4001,…]}'
// prints one JSON line per frame: {"frame":i,"decoded":…,"handshake":…|"handshake_error":…}
// and one per code: {"code":n,"action":…}.
const fs = require('fs');
const source = fs.readFileSync(require.resolve('pusher-js'), 'utf8');
const start = source.indexOf('const Protocol = {');
const end = source.indexOf('\n};\n', start);
if (start < 0 || end < 0) throw new Error('pusher-js Protocol not found in its bundle');
const Protocol = new Function(source.slice(start, end + 3) + '\nreturn Protocol;')();
const args = JSON.parse(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
(args.frames || []).forEach((data, frame) => {
  const line = { frame };
  try { line.decoded = Protocol.decodeMessage({ data }); } catch (e) { line.decode_error = e.type || String(e); }
  try { line.handshake = Protocol.processHandshake({ data }); } catch (e) { line.handshake_error = String(e.type || e); }
  out(line);
});
(args.codes || []).forEach((code) => out({ code, action: Protocol.getCloseAction({ code }) }));
