// WebSockets over HTTP/2 through wsedge's proxy mode, with Node's own http2 client, to the
// Python `websockets` app server (tests/upstreams/python_upstream.py) behind it.
// Usage: node h2_proxy_client.js http://HOST:PORT | https://HOST:PORT CA.pem
// Prints one line per check; exits non-zero on the first failure.
'use strict';
const http2 = require('http2');
const fs = require('fs');
const crypto = require('crypto');

const [url, ca] = process.argv.slice(2);
const timer = setTimeout(() => fail('timed out'), 30000);

function fail(why) {
  console.error('FAIL: ' + why);
  process.exit(1);
}

// A masked client frame of any length.
function frame(opcode, payload) {
  const body = Buffer.from(payload);
  let head;
  if (body.length < 126) {
    head = Buffer.from([0x80 | opcode, 0x80 | body.length]);
  } else if (body.length < 65536) {
    head = Buffer.alloc(4);
    head[0] = 0x80 | opcode;
    head[1] = 0x80 | 126;
    head.writeUInt16BE(body.length, 2);
  } else {
    head = Buffer.alloc(10);
    head[0] = 0x80 | opcode;
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(body.length), 2);
  }
  const mask = crypto.randomBytes(4);
  const masked = Buffer.alloc(body.length);
  for (let i = 0; i < body.length; i++) masked[i] = body[i] ^ mask[i % 4];
  return Buffer.concat([head, mask, masked]);
}

// Reads whole unmasked server frames (any length) from a stream; `ended` resolves at its end.
function frames(stream) {
  let buffered = Buffer.alloc(0);
  const waiting = [];
  const ready = [];
  stream.on('data', (chunk) => {
    buffered = Buffer.concat([buffered, chunk]);
    for (;;) {
      if (buffered.length < 2) break;
      let len = buffered[1] & 0x7f;
      let at = 2;
      if (len === 126) {
        if (buffered.length < 4) break;
        len = buffered.readUInt16BE(2);
        at = 4;
      } else if (len === 127) {
        if (buffered.length < 10) break;
        len = Number(buffered.readBigUInt64BE(2));
        at = 10;
      }
      if (buffered.length < at + len) break;
      const f = { opcode: buffered[0] & 0x0f, payload: buffered.subarray(at, at + len) };
      buffered = buffered.subarray(at + len);
      const w = waiting.shift();
      if (w) w(f); else ready.push(f);
    }
  });
  const ended = new Promise((resolve) => stream.on('end', resolve));
  const next = () => new Promise((resolve) => {
    const f = ready.shift();
    if (f) resolve(f); else waiting.push(resolve);
  });
  return { next, ended };
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

  // Two streams on one connection, each its own upstream connection with its own key.
  const [a, b] = await Promise.all([
    open(session, '/headers', { 'sec-websocket-protocol': 'chat' }),
    open(session, '/headers'),
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

  const refused = await open(session, '/private');
  const body = await new Promise((resolve) => {
    let text = '';
    refused.stream.on('data', (c) => { text += c; });
    refused.stream.on('end', () => resolve(text));
  });
  console.log('refusal ok: ' + refused.headers[':status'] + ' ' + body.trim());

  const closing = await open(session, '/close/4001');
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
