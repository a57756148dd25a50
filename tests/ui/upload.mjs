// Browser test of the upload page served at GET /.
//
//   node tests/ui/upload.mjs <base_url> <image_path> <screenshot_path>
//
// Opens the page in Debian's Chromium (/usr/bin/chromium) through playwright-core,
// uploads the image with the file input, then again by dropping it on the drop zone
// (a `drop` event carrying a DataTransfer built in the page), waits for the detail
// view (thumbnail loaded, ASCII art shown) and for the image in the gallery, saves a
// full-page screenshot and prints one JSON line:
//   {"id": "...", "thumbnail_width": N, "ascii_lines": N, "gallery_items": N}
// PROGIMAGE_UI_API_KEY, if set, is typed into the page's API key field first.
// Exits 0 on success; on failure prints the reason and the page's console errors to
// stderr and exits 1. Every wait is bounded (30 s; a browser start 60 s, tried twice),
// and the whole run by 240 s.

import { mkdirSync, readFileSync } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import { chromium } from "playwright-core";

const STEP_MS = 30_000;
const LAUNCH_MS = 60_000;
const OVERALL_MS = 240_000;

const [baseArg, imageArg, shotArg] = process.argv.slice(2);
if (!baseArg || !imageArg || !shotArg) {
  process.stderr.write("usage: node upload.mjs <base_url> <image_path> <screenshot_path>\n");
  process.exit(2);
}
const base = new URL(baseArg).href;
const imagePath = resolve(imageArg);
const shotPath = resolve(shotArg);

const pageErrors = [];
let browser;

function fail(reason) {
  process.stderr.write(`FAIL: ${reason}\n`);
  if (pageErrors.length) {
    process.stderr.write(`page errors (${pageErrors.length}):\n`);
    for (const e of pageErrors) process.stderr.write(`  ${e}\n`);
  }
  const exit = () => process.exit(1);
  if (browser) browser.close().then(exit, exit);
  else exit();
  setTimeout(exit, 5_000).unref();
}

const overall = setTimeout(() => fail(`timed out after ${OVERALL_MS / 1000} s`), OVERALL_MS);

const isUpload = (r) => r.request().method() === "POST" && new URL(r.url()).pathname === "/";

async function uploadedId(responsePromise, how) {
  const response = await responsePromise;
  const status = response.status();
  const body = await response.text();
  if (status !== 200 && status !== 201) throw new Error(`${how}: POST / answered ${status}: ${body}`);
  const id = JSON.parse(body).id;
  if (!/^[0-9a-f]{40}$/.test(id || "")) throw new Error(`${how}: no id in the reply: ${body}`);
  return { id, status };
}

// Chromium has been seen, once, on a fresh CI machine, to print nothing for 30 s after
// it was started, and playwright gave up. Each start now gets LAUNCH_MS, and a start
// that fails is tried once more before the test fails. (The "[: ...: unexpected
// operator" on Chromium's stderr is /etc/chromium.d/dev-shm reading two mounts of
// /dev/shm; harmless: playwright passes --disable-dev-shm-usage anyway.)
async function launch() {
  const options = {
    headless: true,
    executablePath: "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    timeout: LAUNCH_MS,
  };
  try {
    return await chromium.launch(options);
  } catch (e) {
    process.stderr.write(`Chromium did not start, trying once more: ${String(e).split("\n")[0]}\n`);
    return await chromium.launch(options);
  }
}

async function main() {
  browser = await launch();
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(STEP_MS);
  page.setDefaultNavigationTimeout(STEP_MS);
  page.on("console", (m) => {
    if (m.type() === "error") pageErrors.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => pageErrors.push(`exception: ${e.message}`));
  page.on("requestfailed", (r) => pageErrors.push(`request failed: ${r.method()} ${r.url()}: ${r.failure()?.errorText}`));

  const nav = await page.goto(base, { waitUntil: "load" });
  if (!nav || !nav.ok()) throw new Error(`GET ${base} answered ${nav ? nav.status() : "nothing"}`);
  for (const sel of ["#drop", "#file", "#status", "#gallery", "#next", "#prev"]) {
    if ((await page.locator(sel).count()) !== 1) throw new Error(`the page has no ${sel}`);
  }

  // With a key in PROGIMAGE_UI_API_KEY, the page sends it (and fetches images with it).
  if (process.env.PROGIMAGE_UI_API_KEY) await page.fill("#apikey", process.env.PROGIMAGE_UI_API_KEY);

  // 1. The file input.
  const first = page.waitForResponse(isUpload);
  await page.setInputFiles("#file", imagePath);
  const { id, status } = await uploadedId(first, "file input");

  await page.waitForFunction(
    (id) => {
      const img = document.querySelector("#detail img#detail-thumbnail");
      return img && (img.dataset.src || img.src).includes(id) && img.complete && img.naturalWidth > 0;
    },
    id,
  ).catch(async (e) => {
    const text = await page.locator("#detail").innerText().catch(() => "");
    throw new Error(`the detail thumbnail did not load: ${e.message.split("\n")[0]}\n#detail: ${text}`);
  });
  const thumbnailWidth = await page.$eval("img#detail-thumbnail", (img) => img.naturalWidth);

  await page.waitForFunction(
    () => {
      const t = document.querySelector("pre#ascii")?.textContent ?? "";
      return t.trim().split("\n").length >= 5;
    },
  ).catch(async () => {
    throw new Error(`pre#ascii has no ASCII art: ${JSON.stringify(await page.locator("pre#ascii").textContent())}`);
  });
  const asciiLines = await page.$eval("pre#ascii", (pre) => pre.textContent.trim().split("\n").length);

  await page.waitForSelector(`#gallery .gallery-item[data-id="${id}"]`, { state: "attached" }).catch(async () => {
    const ids = await page.$$eval(".gallery-item", (els) => els.map((e) => e.dataset.id));
    throw new Error(`the gallery does not show ${id}; it shows [${ids.join(", ")}]`);
  });

  // 2. Drag and drop: the same bytes dropped on the zone (a second upload answers 200, same id).
  await page.waitForFunction(() => !document.querySelector("#drop").disabled);
  const bytes = readFileSync(imagePath).toString("base64");
  const second = page.waitForResponse(isUpload);
  await page.evaluate(
    ({ bytes, name }) => {
      const raw = Uint8Array.from(atob(bytes), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([raw], name, { type: "application/octet-stream" }));
      const zone = document.querySelector("#drop");
      for (const type of ["dragenter", "dragover", "drop"]) {
        zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: dt }));
      }
    },
    { bytes, name: basename(imagePath) },
  );
  const dropped = await uploadedId(second, "drag and drop");
  if (dropped.id !== id) throw new Error(`the dropped file got id ${dropped.id}, the picked one ${id}`);
  await page.waitForFunction(() => document.querySelector("#status")?.className === "ok").catch(async () => {
    throw new Error(`#status after the drop: ${await page.locator("#status").textContent()}`);
  });
  await page.waitForSelector(`#gallery .gallery-item[data-id="${id}"]`, { state: "attached" });
  await page.waitForFunction(
    (id) => {
      const img = document.querySelector(`.gallery-item[data-id="${id}"] img`);
      return img && img.complete && img.naturalWidth > 0;
    },
    id,
  ).catch(() => {
    throw new Error(`the gallery thumbnail of ${id} did not load`);
  });
  const galleryItems = await page.locator("#gallery .gallery-item").count();

  // Let the other transforms finish (or fail) before the screenshot; not an assertion.
  await page
    .waitForFunction(() => [...document.querySelectorAll("#detail img")].every((i) => i.complete), null, {
      timeout: 15_000,
    })
    .catch(() => {});

  mkdirSync(dirname(shotPath), { recursive: true });
  await page.screenshot({ path: shotPath, fullPage: true });

  const uncaught = pageErrors.filter((e) => e.startsWith("exception:"));
  if (uncaught.length) throw new Error("the page threw");

  process.stdout.write(
    JSON.stringify({
      id,
      upload_status: status,
      thumbnail_width: thumbnailWidth,
      ascii_lines: asciiLines,
      gallery_items: galleryItems,
    }) + "\n",
  );
  clearTimeout(overall);
  await browser.close();
  process.exit(0);
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
