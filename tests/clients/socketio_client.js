// The default `socket.io-client` (polling first, then the upgrade to WebSocket), N clients
// through the edge. Usage: node socketio_client.js URL N [CA_FILE]
// Prints "clients N upgraded U messages M" and every connect error; exits 1 unless every
// client upgraded and had its message answered.
const fs = require('fs');
const { io } = require('socket.io-client');

const [url, count = '10', caFile] = process.argv.slice(2);
const total = Number(count);
const options = {
  forceNew: true,
  reconnection: false,
  timeout: 15000,
  // Node's client keeps cookies (the edge's sticky one) only with credentials on, as a
  // browser does for its own origin.
  withCredentials: true,
};
if (caFile) options.ca = fs.readFileSync(caFile);

function one(i) {
  return new Promise((resolve) => {
    const socket = io(url, options);
    const done = (outcome) => {
      clearTimeout(timer);
      socket.close();
      resolve(outcome);
    };
    const timer = setTimeout(() => done({ error: 'timed out' }), 20000);
    socket.on('connect_error', (error) => done({ error: `connect_error: ${error.message} ${JSON.stringify(error.context && error.context.responseText || '')}` }));
    socket.on('connect', () => {
      const engine = socket.io.engine;
      const send = () => socket.timeout(10000).emit('msg', `hello ${i}`, (error, reply) => {
        if (error) return done({ error: `no answer: ${error.message}` });
        done({ upgraded: reply.transport === 'websocket', answered: reply.echo === `hello ${i}`, from: reply.from });
      });
      if (engine.transport.name === 'websocket') return send();
      engine.once('upgrade', send);
      engine.once('upgradeError', (error) => done({ error: `upgradeError: ${error.message}` }));
    });
  });
}

(async () => {
  const outcomes = [];
  const batch = 10;
  for (let start = 0; start < total; start += batch) {
    const size = Math.min(batch, total - start);
    outcomes.push(...await Promise.all(Array.from({ length: size }, (_, k) => one(start + k))));
  }
  const upgraded = outcomes.filter((o) => o.upgraded).length;
  const messages = outcomes.filter((o) => o.answered).length;
  const servers = new Set(outcomes.map((o) => o.from).filter(Boolean));
  console.log(`clients ${total} upgraded ${upgraded} messages ${messages} servers ${servers.size}`);
  for (const o of outcomes.filter((o) => o.error)) console.log(`error ${o.error}`);
  process.exit(upgraded === total && messages === total ? 0 : 1);
})();
