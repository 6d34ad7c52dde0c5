// WebSockets over HTTP/2 (RFC 8441) with Node's own http2 client: extended CONNECT streams,
// several on one connection, a refusal, a plain GET, and the close handshake.
// Usage: node h2_client.js http://HOST:PORT | https://HOST:PORT CA.pem
// Prints one line per check; exits non-zero on the first failure.
'use strict';
const http2 = require('http2');
const { fail, frame, frames, open, connect } = require('./h2_websocket');

const [url, ca] = process.argv.slice(2);
const timer = setTimeout(() => fail('timed out'), 20000);

async function main() {
  const session = await connect(url, ca);

  const [a, b] = await Promise.all([
    open(session, url, '/chat', { 'sec-websocket-protocol': 'v1' }),
    open(session, url, '/chat'),
  ]);
  for (const s of [a, b]) {
    if (s.headers[':status'] !== 200) fail('upgrade status ' + s.headers[':status']);
  }
  if (a.headers['sec-websocket-protocol'] !== 'v1') fail('subprotocol not chosen');
  if (a.headers['sec-websocket-accept'] !== undefined) fail('an accept value was sent');
  const readA = frames(a.stream).next;
  const readB = frames(b.stream).next;
  a.stream.write(frame(1, 'hello a'));
  b.stream.write(frame(1, 'hello b'));
  const [ea, eb] = await Promise.all([readA(), readB()]);
  if (ea.payload.toString() !== 'hello a' || eb.payload.toString() !== 'hello b') fail('echo differs');
  console.log('echo ok: 2 streams');

  const refused = await open(session, url, '/nope');
  console.log('rejection ok: ' + refused.headers[':status']);

  const get = session.request({ ':method': 'GET', ':path': '/chat' });
  const status = await new Promise((resolve) => get.on('response', (h) => resolve(h[':status'])));
  get.resume();
  console.log('get ok: ' + status);

  a.stream.write(frame(8, Buffer.from([0x03, 0xe8])));
  const closing = await readA();
  if (closing.opcode !== 8) fail('no Close frame');
  const code = closing.payload.readUInt16BE(0);
  a.stream.end();
  await new Promise((resolve) => a.stream.on('close', resolve));
  console.log('close ok: ' + code);

  b.stream.close(http2.constants.NGHTTP2_CANCEL);
  session.close();
  clearTimeout(timer);
}

main().catch((e) => fail(e.stack || String(e)));
