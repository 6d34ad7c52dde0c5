// Headless Chromium (Debian's) through playwright-core, as the browser tests launch it:
// a test certificate (CA_FILE) trusted by its public key's SHA-256, as Chromium's
// --ignore-certificate-errors-spki-list does for a test CA.
const crypto = require("crypto");
const fs = require("fs");
const { chromium } = require("playwright-core");

function spkiHash(pemFile) {
  const key = new crypto.X509Certificate(fs.readFileSync(pemFile)).publicKey;
  const der = key.export({ type: "spki", format: "der" });
  return crypto.createHash("sha256").update(der).digest("base64");
}

async function launch(caFile) {
  const args = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-features=LocalNetworkAccessChecks",
  ];
  if (caFile) {
    args.push(`--ignore-certificate-errors-spki-list=${spkiHash(caFile)}`);
  }
  return chromium.launch({
    executablePath: process.env.WSEDGE_CHROMIUM || "/usr/bin/chromium",
    args,
    timeout: 60000,
  });
}

// Defines `nextEvent(ws, type)` in the page: the next `type` event of WebSocket `ws`, or a
// rejection on its error or after 10 s. Call it again after a navigation.
async function defineNextEvent(page) {
  await page.evaluate(() => {
    window.nextEvent = (ws, type) =>
      new Promise((resolve, reject) => {
        ws.addEventListener(type, resolve, { once: true });
        ws.addEventListener("error", () => reject(new Error(`error before ${type}`)), {
          once: true,
        });
        setTimeout(() => reject(new Error(`no ${type} within 10 s`)), 10000);
      });
  });
}

module.exports = { launch, defineNextEvent };
