// WebSockets over HTTP/2 (RFC 8441) with Node's own http2 client: extended CONNECT streams,
// several on one connection, a refusal, a plain GET, and the close handshake.
// Usage: node h2_client.js http://HOST:PORT | https://HOST:PORT CA.pem
// Prints one line per check; exits non-zero on the first failure.
'use strict';
const http2 = require('http2');
const fs = require('fs');
const crypto = require('crypto');

const [url, ca] = process.argv.slice(2);
const timer = setTimeout(() => fail('timed out'), 20000);

function fail(why) {
  console.error('FAIL: ' + why);
  process.exit(1);
}

function frame(opcode, payload) {
  const mask = crypto.randomBytes(4);
  const body = Buffer.from(payload);
  if (body.length > 125) fail('test frames are short');
  const out = Buffer.alloc(6 + body.length);
  out[0] = 0x80 | opcode;
  out[1] = 0x80 | body.length;
  mask.copy(out, 2);
  for (let i = 0; i < body.length; i++) out[6 + i] = body[i] ^ mask[i % 4];
  return out;
}

// Reads whole unmasked server frames from a stream.
function frames(stream) {
  let buffered = Buffer.alloc(0);
  const waiting = [];
  const ready = [];
  stream.on('data', (chunk) => {
    buffered = Buffer.concat([buffered, chunk]);
    while (buffered.length >= 2) {
      const len = buffered[1] & 0x7f;
      if (len > 125 || buffered.length < 2 + len) break;
      const f = { opcode: buffered[0] & 0x0f, payload: buffered.subarray(2, 2 + len) };
      buffered = buffered.subarray(2 + len);
      const w = waiting.shift();
      if (w) w(f); else ready.push(f);
    }
  });
  return () => new Promise((resolve) => {
    const f = ready.shift();
    if (f) resolve(f); else waiting.push(resolve);
  });
}

function open(session, path, extra) {
  const headers = Object.assign({
    ':method': 'CONNECT',
    ':protocol': 'websocket',
    ':path': path,
    ':scheme': url.startsWith('https') ? 'https' : 'http',
    ':authority': new URL(url).host,
    'sec-websocket-version': '13',
  }, extra || {});
  const stream = session.request(headers, { endStream: false });
  return new Promise((resolve, reject) => {
    stream.on('response', (h) => resolve({ stream, headers: h }));
    stream.on('error', reject);
  });
}

async function main() {
  const options = ca ? { ca: fs.readFileSync(ca) } : {};
  const session = http2.connect(url, options);
  session.on('error', (e) => fail('session: ' + e.message));
  await new Promise((resolve) => session.on('remoteSettings', (s) => {
    if (!s.enableConnectProtocol) fail('SETTINGS_ENABLE_CONNECT_PROTOCOL not sent');
    resolve();
  }));
  console.log('settings ok: enableConnectProtocol');

  const [a, b] = await Promise.all([
    open(session, '/chat', { 'sec-websocket-protocol': 'v1' }),
    open(session, '/chat'),
  ]);
  for (const s of [a, b]) {
    if (s.headers[':status'] !== 200) fail('upgrade status ' + s.headers[':status']);
  }
  if (a.headers['sec-websocket-protocol'] !== 'v1') fail('subprotocol not chosen');
  if (a.headers['sec-websocket-accept'] !== undefined) fail('an accept value was sent');
  const readA = frames(a.stream);
  const readB = frames(b.stream);
  a.stream.write(frame(1, 'hello a'));
  b.stream.write(frame(1, 'hello b'));
  const [ea, eb] = await Promise.all([readA(), readB()]);
  if (ea.payload.toString() !== 'hello a' || eb.payload.toString() !== 'hello b') fail('echo differs');
  console.log('echo ok: 2 streams');

  const refused = await open(session, '/nope');
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
