// Drives wsedge from a real browser: headless Chromium (Debian's), through playwright-core.
//
// Usage: node browser_client.js BASE_URL [CA_FILE]   (ws://HOST:PORT, or wss:// and the
// certificate the browser is told to trust, by its public key's SHA-256, as Chromium's
// --ignore-certificate-errors-spki-list does for a test CA)
// Prints one line per check; exits non-zero on the first failure.
const { launch, defineNextEvent } = require("./chromium");

const [base, caFile] = process.argv.slice(2);

async function main() {
  const browser = await launch(caFile);
  try {
    const page = await browser.newPage();
    await defineNextEvent(page);
    const result = await page.evaluate(async (url) => {
      const ws = new WebSocket(url, ["v1", "v2"]);
      ws.binaryType = "arraybuffer";
      const next = (type) => window.nextEvent(ws, type);
      await next("open");
      const protocol = ws.protocol;
      ws.send("héllo");
      const text = (await next("message")).data;
      const blob = new Uint8Array(150000).map((_, i) => i % 251);
      ws.send(blob);
      const echoed = new Uint8Array((await next("message")).data);
      const same = echoed.length === blob.length && echoed.every((b, i) => b === blob[i]);
      const closed = next("close");
      ws.close(4000, "done");
      const close = await closed;
      return { protocol, text, same, code: close.code, clean: close.wasClean };
    }, `${base}/chat`);
    if (result.protocol !== "v2") throw new Error(`subprotocol ${result.protocol}`);
    if (result.text !== "héllo") throw new Error(`text echo ${result.text}`);
    if (!result.same) throw new Error("binary echo differs");
    console.log("echo ok: subprotocol v2, text, 150000-byte binary");
    if (result.code !== 4000 || !result.clean) {
      throw new Error(`close ${result.code} clean=${result.clean}`);
    }
    console.log(`close ok: ${result.code}`);
    const refused = await page.evaluate(async (url) => {
      const ws = new WebSocket(url);
      return new Promise((resolve) => {
        ws.onopen = () => resolve("opened");
        ws.onclose = (event) => resolve(`closed ${event.code}`);
        setTimeout(() => resolve("no answer within 10 s"), 10000);
      });
    }, `${base}/elsewhere`);
    // A browser reports a refused handshake as an abnormal closure (1006), by design.
    if (refused !== "closed 1006") throw new Error(`/elsewhere: ${refused}`);
    console.log("rejection ok: 1006");
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.error(error.stack || String(error));
  process.exit(1);
});
