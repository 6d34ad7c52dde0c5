// Node `ws` as a handshake server: noServer mode on a plain http.Server; after the upgrade,
// close(1000) (close mode) or echo every message (echo mode, for holds).
// Usage: node node_ws_server.js PORT [close|echo]   (NODE_PATH must reach the ws package)
'use strict';
const http = require('node:http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2]);
const echo = process.argv[3] === 'echo';
const wss = new WebSocketServer({ noServer: true });
const server = http.createServer((req, res) => { res.writeHead(426); res.end(); });
server.on('upgrade', (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, (ws) => {
    if (echo) ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    else ws.close(1000);
  });
});
server.listen({ port, host: '127.0.0.1', backlog: 4096 }, () => console.log(`listening on 127.0.0.1:${port}`));
