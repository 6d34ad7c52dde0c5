// WebSockets over HTTP/2 through wsedge's proxy mode, with Node's own http2 client, to the
// Python `websockets` app server (tests/upstreams/python_upstream.py) behind it.
// Usage: node h2_proxy_client.js http://HOST:PORT | https://HOST:PORT CA.pem
// Prints one line per check; exits non-zero on the first failure.
'use strict';
const http2 = require('http2');
const crypto = require('crypto');
const { fail, frame, frames, open, connect } = require('./h2_websocket');

const [url, ca] = process.argv.slice(2);
const timer = setTimeout(() => fail('timed out'), 30000);

async function main() {
  const session = await connect(url, ca);

  // Two streams on one connection, each its own upstream connection with its own key.
  const [a, b] = await Promise.all([
    open(session, url, '/headers', { 'sec-websocket-protocol': 'chat' }),
    open(session, url, '/headers'),
  ]);
  for (const s of [a, b]) {
    if (s.headers[':status'] !== 200) fail('upgrade status ' + s.headers[':status']);
    if (s.headers['sec-websocket-accept'] !== undefined) fail('an accept value was passed on');
  }
  if (a.headers['sec-websocket-protocol'] !== 'chat') fail('the upstream\'s subprotocol was not passed on');
  const readA = frames(a.stream);
  const readB = frames(b.stream);
  const seen = [];
  for (const read of [readA, readB]) {
    const f = await read.next();
    const headers = Object.fromEntries(JSON.parse(f.payload.toString()).map(([k, v]) => [k.toLowerCase(), v]));
    if (headers['x-forwarded-for'] !== '127.0.0.1') fail('X-Forwarded-For: ' + headers['x-forwarded-for']);
    if ((headers['upgrade'] || '').toLowerCase() !== 'websocket') fail('Upgrade: ' + headers['upgrade']);
    seen.push(headers['sec-websocket-key']);
  }
  if (seen[0] === seen[1] || seen[0] === 'dGhlIHNhbXBsZSBub25jZQ==') fail('keys not fresh: ' + seen);
  console.log('upstream request ok: fresh keys, X-Forwarded-For');

  // A message larger than a stream's window crosses flow control both ways.
  const big = crypto.randomBytes(300 * 1024);
  a.stream.write(frame(2, big));
  b.stream.write(frame(1, 'hello b'));
  const [ea, eb] = await Promise.all([readA.next(), readB.next()]);
  if (!ea.payload.equals(big)) fail('the large echo differs: ' + ea.payload.length);
  if (eb.payload.toString() !== 'hello b') fail('echo differs');
  console.log('echo ok: 307200 bytes and a text');

  const refused = await open(session, url, '/private');
  const body = await new Promise((resolve) => {
    let text = '';
    refused.stream.on('data', (c) => { text += c; });
    refused.stream.on('end', () => resolve(text));
  });
  console.log('refusal ok: ' + refused.headers[':status'] + ' ' + body.trim());

  const closing = await open(session, url, '/close/4001');
  const readC = frames(closing.stream);
  const close = await readC.next();
  if (close.opcode !== 8) fail('no Close frame from the upstream');
  closing.stream.write(frame(8, close.payload.subarray(0, 2)));
  closing.stream.end();
  await readC.ended;
  console.log('upstream close ok: ' + close.payload.readUInt16BE(0));

  a.stream.write(frame(8, Buffer.from([0x03, 0xe8])));
  const closed = await readA.next();
  if (closed.opcode !== 8) fail('no Close frame');
  a.stream.end();
  await readA.ended;
  console.log('close ok: ' + closed.payload.readUInt16BE(0));

  b.stream.close(http2.constants.NGHTTP2_CANCEL);
  session.close();
  clearTimeout(timer);
}

main().catch((e) => fail(e.stack || String(e)));
