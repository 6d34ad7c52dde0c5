// WebSockets over HTTP/2 (RFC 8441) for the Node test clients: frames written and read on a
// stream, an extended CONNECT opened, a session whose SETTINGS allow it.
'use strict';
const http2 = require('http2');
const fs = require('fs');
const crypto = require('crypto');

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

function open(session, url, path, extra) {
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

// A session to `url` (with `ca` for https), once the server's SETTINGS allow extended CONNECT.
async function connect(url, ca) {
  const options = ca ? { ca: fs.readFileSync(ca) } : {};
  const session = http2.connect(url, options);
  session.on('error', (e) => fail('session: ' + e.message));
  await new Promise((resolve) => session.on('remoteSettings', (s) => {
    if (!s.enableConnectProtocol) fail('SETTINGS_ENABLE_CONNECT_PROTOCOL not sent');
    resolve();
  }));
  console.log('settings ok: enableConnectProtocol');
  return session;
}

module.exports = { fail, frame, frames, open, connect };
