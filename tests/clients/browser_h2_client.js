// A real browser's WebSocket over HTTP/2 (RFC 8441): headless Chromium fetches from the
// origin first (an HTTP/2 connection by ALPN), then opens a wss:// WebSocket to the same
// origin, which Chromium sends as an extended CONNECT on that connection when the server's
// SETTINGS allow it. Which path was taken is read on the server (its counters).
//
// Usage: node browser_h2_client.js https://localhost:PORT CA_FILE
const crypto = require("crypto");
const fs = require("fs");
const { chromium } = require("playwright-core");

const [base, caFile] = process.argv.slice(2);

function spkiHash(pemFile) {
  const key = new crypto.X509Certificate(fs.readFileSync(pemFile)).publicKey;
  const der = key.export({ type: "spki", format: "der" });
  return crypto.createHash("sha256").update(der).digest("base64");
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.WSEDGE_CHROMIUM || "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--no-first-run",
      "--disable-features=LocalNetworkAccessChecks",
      `--ignore-certificate-errors-spki-list=${spkiHash(caFile)}`,
    ],
    timeout: 60000,
  });
  try {
    const page = await browser.newPage();
    // The page's own origin is the server's (its 426 is a page all the same): its
    // connection, and the socket's, are in the same pool (same network partition).
    await page.goto(`${base}/`);
    const result = await page.evaluate(async (base) => {
      await fetch(`${base}/`);
      const ws = new WebSocket(`${base.replace("https", "wss")}/chat`);
      const next = (type) =>
        new Promise((resolve, reject) => {
          ws.addEventListener(type, resolve, { once: true });
          ws.addEventListener("error", () => reject(new Error(`error before ${type}`)), {
            once: true,
          });
          setTimeout(() => reject(new Error(`no ${type} within 10 s`)), 10000);
        });
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
