// The map page in a real Chromium (Debian's, headless, driven by playwright-core)
// against `nearby run --dev`: two users on two pages see each other, one moves
// and the other sees the new distance, one goes ghost and vanishes with the
// reason shown; an expired or missing token shows a sign-in error.
// Environment: NEARBY_URL (Envoy), NEARBY_MAP_URL (the page), NEARBY_RUN_ID,
// NEARBY_EXPIRED_TOKEN, NEARBY_ARTEFACTS (screenshots and timings go there).
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";
import { createNodeClient, distanceM } from "@nearby/sdk/node";

const MAP = process.env.NEARBY_MAP_URL;
const EDGE = process.env.NEARBY_URL;
const RUN = process.env.NEARBY_RUN_ID ?? Math.random().toString(36).slice(2, 8);
const ARTEFACTS = process.env.NEARBY_ARTEFACTS ?? "/tmp";
const CHROMIUM = process.env.NEARBY_CHROMIUM ?? "/usr/bin/chromium";
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const MOVE_BOUND_MS = 5000; // the other page shows a move within this
const timings = {};
let browser;

async function timed(name, fn) {
  const t0 = performance.now();
  const result = await fn();
  timings[name] = Math.round(performance.now() - t0);
  return result;
}

async function devToken(userId, name) {
  const r = await fetch(`${EDGE}/dev/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user_id: userId, display_name: name }),
  });
  const body = await r.text();
  assert.equal(r.status, 200, body);
  return JSON.parse(body).token;
}

async function signIn(lat, lng, userId, name) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  const page = await context.newPage();
  page.on("console", (m) => m.type() === "error" && console.log(`[${userId}] ${m.text()}`));
  await page.goto(`${MAP}?lat=${lat}&lng=${lng}`);
  await page.fill("#user-id", userId);
  await page.fill("#display-name", name);
  await page.click("#signin-button");
  await page.waitForSelector('#status[data-state="connected"]');
  return page;
}

/** The distance the page shows for `userId` (from the row's data attribute). */
const shownDistance = (page, userId) =>
  page.$eval(`#friends tr[data-user-id="${userId}"]`, (tr) => Number(tr.dataset.distanceMeters));

before(async () => {
  assert.ok(MAP && EDGE, "set NEARBY_MAP_URL and NEARBY_URL");
  mkdirSync(ARTEFACTS, { recursive: true });
  // launch() gives every run a fresh, temporary user-data-dir
  browser = await timed("launch chromium", () =>
    chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS }),
  );
});

after(async () => {
  await browser?.close();
  writeFileSync(join(ARTEFACTS, "browser-timings.json"), JSON.stringify(timings, null, 2));
  console.log(`timings ms ${JSON.stringify(timings)}`);
});

test("two users see each other move; ghost mode removes one with the reason shown", async () => {
  const alice = `alice-${RUN}`;
  const bob = `bob-${RUN}`;
  // friends through the API first (the dev login creates the users)
  const [aliceToken, bobToken] = await Promise.all([devToken(alice, "Alice"), devToken(bob, "Bob")]);
  await createNodeClient(EDGE, { token: aliceToken }).sendFriendRequest(bob);
  await createNodeClient(EDGE, { token: bobToken }).acceptFriendRequest(alice);

  // Carol stands still 1.2 km north-west of Alice and asks her to be friends
  const carol = `carol-${RUN}`;
  const carolToken = await devToken(carol, "Carol");
  const carolClient = createNodeClient(EDGE, { token: carolToken });
  await carolClient.sendFriendRequest(alice);
  await carolClient.reportLocation(52.528, 13.393);

  const A = [52.52, 13.405];
  const B = [52.52, 13.4344]; // about 2 km east
  const pageA = await timed("sign in alice", () => signIn(...A, alice, "Alice"));
  const pageB = await timed("sign in bob", () => signIn(...B, bob, "Bob"));

  await timed("see each other", async () => {
    await pageA.waitForSelector(`#friends tr[data-user-id="${bob}"]`);
    await pageB.waitForSelector(`#friends tr[data-user-id="${alice}"]`);
  });

  // on her page Alice accepts Carol's request: Carol joins her live list
  await timed("accept a request on the page, the new friend appears", async () => {
    await pageA.click(`#requests li[data-user-id="${carol}"] button`);
    await pageA.waitForSelector(`#friends tr[data-user-id="${carol}"]`);
  });
  await pageA.waitForSelector(`#requests li[data-user-id="${carol}"]`, { state: "detached" });
  assert.ok(Math.abs((await shownDistance(pageA, bob)) - distanceM(...A, ...B)) < 1);
  assert.equal(await pageA.textContent(`#friends tr[data-user-id="${bob}"] td.name`), "Bob");
  assert.match(await pageA.textContent(`#friends tr[data-user-id="${bob}"] td.distance`), /^1\.99 km$/);
  assert.match(await pageA.textContent(`#friends tr[data-user-id="${bob}"] td.updated`), /^\d+ s ago$/);
  assert.ok(await pageA.isVisible(`#map g.friend[data-user-id="${bob}"]`), "Bob is on Alice's map");

  // Bob moves (types a new position): Alice's page shows the new distance
  const moved = [52.52, 13.415];
  await pageB.fill("#lat", String(moved[0]));
  await pageB.fill("#lng", String(moved[1]));
  const want = distanceM(...A, ...moved);
  await timed("move seen by the other page", async () => {
    await pageB.click('#position-form button[type="submit"]');
    await pageA.waitForFunction(
      ([id, d]) => {
        const tr = document.querySelector(`#friends tr[data-user-id="${id}"]`);
        return tr !== null && Math.abs(Number(tr.dataset.distanceMeters) - d) < 1;
      },
      [bob, want],
      { timeout: MOVE_BOUND_MS },
    );
  });
  assert.equal(await pageA.textContent(`#friends tr[data-user-id="${bob}"] td.distance`), `${Math.round(want)} m`);
  // Bob's own page recomputed Alice's distance from his new position at once
  assert.ok(Math.abs((await shownDistance(pageB, alice)) - want) < 1);

  await pageA.waitForTimeout(900); // let the marker's move animation finish for the picture
  await pageA.screenshot({ path: join(ARTEFACTS, "map-page.png") });

  // Alice sends a friend request from the page
  const dave = `dave-${RUN}`;
  const daveClient = createNodeClient(EDGE, { token: await devToken(dave, "Dave") });
  await pageA.fill("#request-user", dave);
  await pageA.click('#request-form button[type="submit"]');
  await pageA.waitForFunction(() => document.querySelector("#request-status").textContent.startsWith("Friend request sent"));
  assert.deepEqual((await daveClient.listFriendRequests("incoming")).map((r) => r.fromUser.userId), [alice]);

  // Alice clicks on her map, 100 px east of herself: she moves there, and Bob's page follows
  const box = await pageA.locator("#map").boundingBox();
  const t0 = performance.now();
  await pageA.mouse.click(box.x + box.width / 2 + 100, box.y + box.height / 2);
  await pageA.waitForFunction((lng) => Number(document.querySelector("#lng").value) > lng, A[1]);
  const clicked = [Number(await pageA.inputValue("#lat")), Number(await pageA.inputValue("#lng"))];
  assert.ok(Math.abs(clicked[0] - A[0]) < 0.001, `a click due east keeps the latitude: ${clicked}`);
  await timed("map click seen by the other page (from the click)", () =>
    pageB.waitForFunction(
      ([id, d]) => {
        const tr = document.querySelector(`#friends tr[data-user-id="${id}"]`);
        return tr !== null && Math.abs(Number(tr.dataset.distanceMeters) - d) < 1;
      },
      [alice, distanceM(...clicked, ...moved)],
      { timeout: MOVE_BOUND_MS },
    ),
  );
  timings["map click seen by the other page (from the click)"] = Math.round(performance.now() - t0);

  // Bob goes ghost: he leaves Alice's page, and the reason is shown
  await timed("ghost seen by the other page", async () => {
    await pageB.check("#ghost");
    await pageA.waitForSelector(`#friends tr[data-user-id="${bob}"]`, { state: "detached" });
  });
  const left = await pageA.waitForSelector(`#left li[data-user-id="${bob}"]`);
  assert.equal(await left.getAttribute("data-reason"), "HIDDEN");
  assert.match(await left.textContent(), /^Bob turned on ghost mode/);
  assert.equal(await pageA.$(`#map g.friend[data-user-id="${bob}"]`), null);
  assert.ok(await pageB.isChecked("#ghost"));
  await pageA.screenshot({ path: join(ARTEFACTS, "map-page-left.png") });

  // a tile URL template (here ?tiles=; MAP_TILE_URL in config.json) draws tiles beneath
  // (a loopback port that refuses: nothing is fetched from outside)
  const template = "http://127.0.0.1:9/{z}/{x}/{y}.png";
  const pageC = await (await browser.newContext()).newPage();
  await pageC.goto(`${MAP}?tiles=${encodeURIComponent(template)}#token=${carolToken}`);
  await pageC.waitForSelector('#status[data-state="connected"]');
  const hrefs = await pageC.$$eval("#map .tiles image", (images) => images.map((i) => i.getAttribute("href")));
  assert.ok(hrefs.length >= 4, `tiles: ${hrefs}`);
  for (const href of hrefs) assert.match(href, /^http:\/\/127\.0\.0\.1:9\/1[0-9]\/\d+\/\d+\.png$/);
});

for (const [label, hash] of [
  ["an expired", () => `#token=${process.env.NEARBY_EXPIRED_TOKEN}`],
  ["a missing", () => "#token="],
]) {
  test(`a page with ${label} token shows a sign-in error`, async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    await timed(`${label} token error`, async () => {
      await page.goto(`${MAP}${hash()}`);
      await page.waitForSelector("#signin-error:not([hidden])");
    });
    const text = await page.textContent("#signin-error");
    assert.match(text, /^Sign-in needed: the server refused your token/);
    assert.match(text, /UNAUTHENTICATED/);
    assert.match(text, /Sign in again/);
    assert.equal(await page.getAttribute("#status", "data-state"), "auth-error");
    assert.ok(await page.isVisible("#signin-form"));
    assert.ok(!(await page.isVisible("#app")));
    await context.close();
  });
}
