// A Socket.IO app server (npm `socket.io`, its defaults: polling first, then the upgrade),
// for the tests in tests/frameworks.rs. Usage: node socketio_server.js PORT NAME
// Prints "listening PORT"; answers every "msg" with its name and the transport in use.
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || 0);
const name = process.argv[3] || 'app';
const server = http.createServer();
const io = new Server(server);
io.on('connection', (socket) => {
  socket.on('msg', (data, ack) => ack({ from: name, echo: data, transport: socket.conn.transport.name }));
});
server.listen(port, '127.0.0.1', () => console.log(`listening ${server.address().port}`));
