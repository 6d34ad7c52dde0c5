// A real browser's WebSocket over HTTP/2 (RFC 8441): headless Chromium fetches from the
// origin first (an HTTP/2 connection by ALPN), then opens a wss:// WebSocket to the same
// origin, which Chromium sends as an extended CONNECT on that connection when the server's
// SETTINGS allow it. Which path was taken is read on the server (its counters).
//
// Usage: node browser_h2_client.js https://localhost:PORT CA_FILE
const { launch, defineNextEvent } = require("./chromium");

const [base, caFile] = process.argv.slice(2);

async function main() {
  const browser = await launch(caFile);
  try {
    const page = await browser.newPage();
    // The page's own origin is the server's (its 426 is a page all the same): its
    // connection, and the socket's, are in the same pool (same network partition).
    await page.goto(`${base}/`);
    await defineNextEvent(page);
    const result = await page.evaluate(async (base) => {
      await fetch(`${base}/`);
      const ws = new WebSocket(`${base.replace("https", "wss")}/chat`);
      const next = (type) => window.nextEvent(ws, type);
      await next("open");
      ws.send("over h2");
      const text = (await next("message")).data;
      const closed = next("close");
      ws.close(1000, "done");
      const close = await closed;
      return { text, code: close.code };
    }, base);
    if (result.text !== "over h2") throw new Error(`echo ${result.text}`);
    console.log(`echo ok: close ${result.code}`);
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.error(error.stack || String(error));
  process.exit(1);
});
