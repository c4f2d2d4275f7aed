/** The session's reconnect rules against scripted streams (no network). */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { backoffPolicy } from "../../src/backoff.js";
import { AuthError, NearbyError } from "../../src/errors.js";
import type { Event, NearbyFriend, ServerMessage } from "../../src/events.js";
import { NearbySession } from "../../src/session.js";
import type { LiveStream, StreamOpener } from "../../src/streams.js";

const friend = (userId: string, distanceMeters: number, latitude = 0, longitude = 0): NearbyFriend => ({
  userId,
  displayName: userId,
  latitude,
  longitude,
  distanceMeters,
  updatedAt: new Date(0),
});

const snap = (...friends: NearbyFriend[]): ServerMessage => ({
  kind: "snapshot",
  snapshot: { kind: "snapshot", friends, totalSize: friends.length, nextPageToken: "", radiusMeters: 8047, receivedAt: new Date() },
});

/** Each opened stream plays one script: messages, then an end (undefined) or an error. */
type Script = { open?: Error; messages: ServerMessage[]; end?: Error };

function scripted(scripts: Script[]): { opener: StreamOpener; opened: [number, number][]; sent: [number, number][] } {
  const opened: [number, number][] = [];
  const sent: [number, number][] = [];
  const opener: StreamOpener = async (lat, lng) => {
    const script = scripts.shift();
    assert.ok(script, "no more scripted streams");
    opened.push([lat, lng]);
    if (script.open) throw script.open;
    const queue = [...script.messages];
    const stream: LiveStream = {
      async next() {
        const m = queue.shift();
        if (m) return m;
        if (script.end) throw script.end;
        return undefined;
      },
      async sendLocation(la, ln) {
        sent.push([la, ln]);
      },
      async requestPage() {
        return undefined;
      },
      close() {},
    };
    return stream;
  };
  return { opener, opened, sent };
}

const fast = { backoff: backoffPolicy({ initialMs: 1, maxMs: 1 }), random: () => 1 };

async function take(session: NearbySession, n: number): Promise<Event[]> {
  const out: Event[] = [];
  for await (const e of session) {
    out.push(e);
    if (out.length === n) break;
  }
  return out;
}

test("snapshot, moves and departures keep nearby sorted; heartbeats are absorbed", async () => {
  const { opener } = scripted([
    {
      messages: [
        snap(friend("a", 100), friend("b", 200)),
        { kind: "heartbeat" },
        { kind: "changes", changes: [{ kind: "update", friend: friend("b", 50) }, { kind: "update", friend: friend("c", 75) }] },
        { kind: "changes", changes: [{ kind: "gone", userId: "a", reason: "HIDDEN" }] },
      ],
    },
  ]);
  const session = new NearbySession(opener, 0, 0, fast);
  const events = await take(session, 4);
  assert.deepEqual(events.map((e) => e.kind), ["snapshot", "friendMoved", "friendMoved", "friendLeft"]);
  assert.deepEqual(events.slice(1, 3).map((e) => e.kind === "friendMoved" && e.isNew), [false, true]);
  assert.deepEqual(events[3], { ...events[3], userId: "a", reason: "HIDDEN" });
  assert.deepEqual(session.nearby.map((f) => f.userId), ["b", "c"]);
  assert.equal(session.state, "connected");
  session.close();
});

test("a transient error reconnects from the last location with jittered backoff", async () => {
  const { opener, opened } = scripted([
    { messages: [snap(friend("a", 1))], end: new ConnectError("upstream reset", Code.Unavailable) },
    { open: new ConnectError("no healthy upstream", Code.Unavailable), messages: [] },
    { messages: [snap(friend("z", 9))] },
  ]);
  const draws = [0.5, 0.25];
  const session = new NearbySession(opener, 1, 2, {
    backoff: backoffPolicy({ initialMs: 10, multiplier: 2, maxMs: 100 }),
    random: () => draws.shift()!,
  });
  const [first] = await take(session, 1);
  assert.equal(first?.kind, "snapshot");
  await session.updateLocation(3, 4);
  const events = await take(session, 3);
  assert.deepEqual(
    events.map((e) => (e.kind === "reconnecting" ? `${e.attempt}:${e.delayMs}:${e.cause}` : e.kind)),
    ["1:5:UNAVAILABLE: upstream reset", "2:5:UNAVAILABLE: no healthy upstream", "snapshot"],
  );
  assert.deepEqual(opened, [[1, 2], [3, 4], [3, 4]]);
  assert.deepEqual(session.nearby.map((f) => f.userId), ["z"]);
  assert.equal(session.connects, 3);
  session.close();
});

test("a Reconnect message is honoured: its retry_after replaces the backoff draw", async () => {
  const { opener } = scripted([
    { messages: [snap(), { kind: "reconnect", reason: "draining", retryAfterMs: 7 }] },
    { messages: [snap()] },
  ]);
  const session = new NearbySession(opener, 0, 0, { backoff: backoffPolicy({ initialMs: 60_000, maxMs: 60_000 }) });
  const events = await take(session, 3);
  assert.deepEqual(events[1], { kind: "reconnecting", attempt: 1, delayMs: 7, cause: "server asked to reconnect: draining" });
  assert.equal(events[2]?.kind, "snapshot");
  session.close();
});

test("a clean end of stream reconnects too; the attempt counter resets on a snapshot", async () => {
  const { opener } = scripted([{ messages: [snap()] }, { messages: [] }, { messages: [snap()] }, { messages: [snap()] }]);
  const session = new NearbySession(opener, 0, 0, fast);
  const events = await take(session, 6);
  assert.deepEqual(
    events.map((e) => (e.kind === "reconnecting" ? `r${e.attempt}` : e.kind)),
    ["snapshot", "r1", "r2", "snapshot", "r1", "snapshot"],
  );
  session.close();
});

test("UNAUTHENTICATED stops retrying with an AuthError; the session is closed", async () => {
  const { opener, opened } = scripted([
    { messages: [snap()], end: new ConnectError("x", Code.Unavailable) },
    { open: new ConnectError("Jwt is expired", Code.Unauthenticated), messages: [] },
  ]);
  const session = new NearbySession(opener, 0, 0, fast);
  const seen: string[] = [];
  await assert.rejects(
    (async () => {
      for await (const e of session) seen.push(e.kind);
    })(),
    (err: unknown) => err instanceof AuthError && err.code === Code.Unauthenticated && /expired/.test(err.message),
  );
  assert.deepEqual(seen, ["snapshot", "reconnecting"]);
  assert.equal(session.state, "closed");
  assert.equal(opened.length, 2);
  assert.deepEqual(await session.next(), { done: true, value: undefined });
});

test("FAILED_PRECONDITION is fatal; maxAttempts gives up with UNAVAILABLE", async () => {
  const s1 = new NearbySession(
    scripted([{ open: new ConnectError("report a location first", Code.FailedPrecondition), messages: [] }]).opener,
    0,
    0,
    fast,
  );
  await assert.rejects(s1.next(), (e: unknown) => e instanceof NearbyError && e.code === Code.FailedPrecondition);
  const down = () => ({ open: new ConnectError("down", Code.Unavailable), messages: [] });
  const s2 = new NearbySession(scripted([down(), down()]).opener, 0, 0, {
    backoff: backoffPolicy({ initialMs: 1, maxMs: 1, maxAttempts: 2 }),
  });
  await assert.rejects(
    (async () => {
      for await (const _ of s2);
    })(),
    (e: unknown) => e instanceof NearbyError && e.code === Code.Unavailable && /gave up after 2/.test(e.message),
  );
});

test("moving recenters the view and sends on the open stream; close ends iteration", async () => {
  const { opener, sent } = scripted([{ messages: [snap(friend("n", 0, 0.001, 0), friend("s", 0, -0.002, 0))] }]);
  const session = new NearbySession(opener, 0, 0, fast);
  await take(session, 1);
  await session.updateLocation(-0.0015, 0);
  assert.deepEqual(sent, [[-0.0015, 0]]);
  assert.deepEqual(session.nearby.map((f) => f.userId), ["s", "n"]);
  assert.ok(Math.abs(session.nearby[0]!.distanceMeters - 55.6) < 0.1);
  await assert.rejects(session.updateLocation(91, 0), RangeError);
  const pending = session.next();
  session.close();
  assert.deepEqual(await pending, { done: true, value: undefined });
  assert.equal(session.state, "closed");
});
