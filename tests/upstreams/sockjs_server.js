// A SockJS app server (npm `sockjs`, prefix /sockjs), for tests/frameworks.rs.
// Usage: node sockjs_server.js PORT NAME. Prints "listening PORT"; echoes every message
// prefixed with its name.
const http = require('http');
const sockjs = require('sockjs');

const port = Number(process.argv[2] || 0);
const name = process.argv[3] || 'app';
const echo = sockjs.createServer({ prefix: '/sockjs', log: () => {} });
echo.on('connection', (conn) => conn.on('data', (message) => conn.write(`${name}:${message}`)));
const server = http.createServer();
echo.installHandlers(server);
server.listen(port, '127.0.0.1', () => console.log(`listening ${server.address().port}`));
