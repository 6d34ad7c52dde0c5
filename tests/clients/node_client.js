// Drives wsedge with Node's `ws` library (an independent implementation).
// Usage: node node_client.js BASE_URL [CA_FILE]   (e.g. ws://127.0.0.1:8080, or wss:// and
// the CA that signed the server's certificate)
'use strict';
const assert = require('node:assert');
const WebSocket = require('ws');

const base = process.argv[2];
const tls = process.argv[3] ? { ca: require('node:fs').readFileSync(process.argv[3]) } : {};
const fail = (why) => { console.error(why); process.exit(1); };
setTimeout(() => fail('timed out'), 20000).unref();

function echo() {
  return new Promise((resolve) => {
    const ws = new WebSocket(base + '/chat', ['v1', 'v2'], tls);
    const big = Buffer.alloc(150000, 7);
    const expected = ['héllo', big];
    ws.on('open', () => {
      assert.strictEqual(ws.protocol, 'v2');
      ws.send('héllo');
      ws.send(big);
      ws.ping(Buffer.from('beat'));
    });
    let pong = false;
    ws.on('pong', (data) => { pong = data.toString() === 'beat'; });
    ws.on('message', (data, isBinary) => {
      const want = expected.shift();
      if (isBinary) assert.ok(Buffer.compare(data, want) === 0, 'binary echo differs');
      else assert.strictEqual(data.toString(), want);
      if (expected.length === 0) {
        console.log('echo ok: subprotocol v2, text, 150000-byte binary');
        ws.close(1000, 'done');
      }
    });
    ws.on('close', (code) => {
      assert.ok(pong, 'no pong');
      assert.strictEqual(code, 1000);
      console.log('close ok: 1000 echoed, pong received');
      resolve();
    });
    ws.on('error', (e) => fail('echo: ' + e.message));
  });
}

function rejection() {
  return new Promise((resolve) => {
    const ws = new WebSocket(base + '/elsewhere', tls);
    ws.on('unexpected-response', (req, res) => {
      assert.strictEqual(res.statusCode, 404);
      console.log('rejection ok: 404');
      req.destroy();
      resolve();
    });
    ws.on('open', () => fail('expected a rejection for /elsewhere'));
    ws.on('error', () => {});
  });
}

echo().then(rejection).then(() => process.exit(0));
