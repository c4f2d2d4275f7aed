/**
 * A fan-out replica drains (SIGTERM, as on a deploy): each session gets the
 * server's Reconnect, waits its retry_after, asks the token source again and
 * comes back with a fresh snapshot once `nearby run` has restarted the
 * replica (the stack has one, so the attempts in between see UNAVAILABLE and
 * back off). Runs last: it takes the stack's only replica down for a moment.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { Event, NearbySession } from "../../src/index.js";
import { createNodeClient } from "../../src/node.js";
import { createWebClient } from "../../src/web.js";
import { BASE, devToken, uid, until } from "./helpers.js";

test("drain: Reconnect honoured, token asked again, new snapshot (Connect and Watch)", async () => {
  const pid = Number(process.env["NEARBY_FANOUT_PID"]);
  assert.ok(pid > 0, "set NEARBY_FANOUT_PID");
  const friend = uid("drainfriend");
  const friendClient = createNodeClient(BASE, { token: await devToken(friend) });
  const asked: Record<string, number> = { bidi: 0, watch: 0 };
  const sessions: Record<string, NearbySession> = {};
  for (const mode of ["bidi", "watch"] as const) {
    const me = uid(`drain${mode}`);
    const token = await devToken(me);
    const source = (): string => {
      asked[mode]! += 1;
      return token;
    };
    const backoff = { initialMs: 200, maxMs: 1000 };
    const client =
      mode === "bidi" ? createNodeClient(BASE, { token: source, backoff }) : createWebClient(BASE, { token: source, backoff });
    await client.sendFriendRequest(friend);
    await friendClient.acceptFriendRequest(me);
    sessions[mode] = client.connect(52.52, 13.405);
  }
  await friendClient.reportLocation(52.52, 13.41);
  for (const session of Object.values(sessions)) await until(session, (e) => e.kind === "snapshot");
  const before = { ...asked };

  process.kill(pid, "SIGTERM");
  const seen: Record<string, Event[]> = {};
  await Promise.all(
    Object.entries(sessions).map(async ([mode, session]) => {
      seen[mode] = await until(session, (e) => e.kind === "snapshot", 60_000);
    }),
  );
  for (const [mode, events] of Object.entries(seen)) {
    const first = events[0];
    assert.ok(first?.kind === "reconnecting", `${mode}: ${JSON.stringify(events)}`);
    assert.match(first.cause, /^server asked to reconnect/, mode);
    assert.ok(first.delayMs <= 1000, `${mode}: retry_after within the drain (DRAIN_S=1): ${first.delayMs}`);
    for (const e of events.slice(1, -1)) assert.equal(e.kind, "reconnecting", mode);
    const session = sessions[mode]!;
    assert.deepEqual(session.nearby.map((f) => f.userId), [friend], mode);
    assert.ok(session.connects >= 2, mode);
    assert.ok(asked[mode]! > before[mode]!, `${mode}: the token source was asked again`);
    assert.equal(session.state, "connected");
    session.close();
  }
});
