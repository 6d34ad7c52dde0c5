// `sockjs-client` (GET /info first, then the WebSocket transport), N clients through the
// edge. Usage: node sockjs_client.js URL N. Prints "clients N echoed E transports T".
// The WebSocket transport only, with a generous timeout: the client's own pick of a
// fallback depends on how fast the machine answers (its timeout is a few round trips), and
// Node's client keeps no cookies for the fallbacks' stickiness as a browser would.
const SockJS = require('sockjs-client');

const [url, count = '10'] = process.argv.slice(2);
const total = Number(count);

function one(i) {
  return new Promise((resolve) => {
    const sock = new SockJS(url, null, { transports: ['websocket'], timeout: 15000 });
    const timer = setTimeout(() => { sock.close(); resolve({ error: 'timed out' }); }, 20000);
    sock.onopen = () => sock.send(`hello ${i}`);
    sock.onmessage = (event) => {
      clearTimeout(timer);
      const transport = sock.transport;
      sock.close();
      resolve({ echoed: event.data.endsWith(`:hello ${i}`), transport });
    };
    sock.onclose = (event) => { clearTimeout(timer); resolve({ error: `closed ${event.code} ${event.reason}` }); };
  });
}

(async () => {
  const outcomes = [];
  for (let start = 0; start < total; start += 10) {
    const size = Math.min(10, total - start);
    outcomes.push(...await Promise.all(Array.from({ length: size }, (_, k) => one(start + k))));
  }
  const echoed = outcomes.filter((o) => o.echoed).length;
  const transports = [...new Set(outcomes.map((o) => o.transport).filter(Boolean))].join(',');
  console.log(`clients ${total} echoed ${echoed} transports ${transports}`);
  for (const o of outcomes.filter((o) => o.error)) console.log(`error ${o.error}`);
  process.exit(echoed === total ? 0 : 1);
})();
