/**
 * The SDK against the real mesh through the real Envoy: Node's bidirectional
 * Connect (gRPC over HTTP/2), and the browser path (Watch + ReportLocation)
 * over the Connect protocol and over grpc-web, from Node's fetch.
 */
import assert from "node:assert/strict";
import { before, describe, test } from "node:test";
import { AuthError, Code, NearbyError, distanceM } from "../../src/index.js";
import type { NearbyClient } from "../../src/index.js";
import { createNodeClient } from "../../src/node.js";
import { createWebClient } from "../../src/web.js";
import { BASE, devToken, sleep, uid, until } from "./helpers.js";

const HOME = [52.52, 13.405] as const; // the watcher
const FAR = [52.52, 13.4344] as const; // about 1989 m east
const NEAR = [52.52, 13.415] as const; // about 677 m east

const clients: Record<string, (token: () => string) => NearbyClient> = {
  "Connect bidi, gRPC over HTTP/2 (Node)": (token) => createNodeClient(BASE, { token }),
  "Watch + ReportLocation, Connect protocol": (token) => createWebClient(BASE, { token }),
  "Watch + ReportLocation, grpc-web": (token) => createWebClient(BASE, { token, protocol: "grpc-web" }),
};

for (const [name, make] of Object.entries(clients)) {
  describe(name, () => {
    const tag = String(Object.keys(clients).indexOf(name));
    const me = uid(`w${tag}`);
    const friend = uid(`f${tag}`);
    let mine: NearbyClient;
    let theirs: NearbyClient;
    let asked = 0;

    before(async () => {
      const myToken = await devToken(me);
      const theirToken = await devToken(friend);
      mine = make(() => {
        asked += 1;
        return myToken;
      });
      theirs = createNodeClient(BASE, { token: theirToken });
      await mine.sendFriendRequest(friend);
      await theirs.acceptFriendRequest(me);
      await theirs.reportLocation(...FAR);
    });

    test("snapshot, the friend's move, our own move recomputed, ghost mode with its reason", async () => {
      const session = mine.connect(...HOME);
      const askedBefore = asked;
      try {
        const [snapshot] = await until(session, (e) => e.kind === "snapshot");
        assert.equal(snapshot?.kind, "snapshot");
        assert.deepEqual(session.nearby.map((f) => f.userId), [friend]);
        const far = session.nearby[0]!;
        assert.ok(Math.abs(far.distanceMeters - distanceM(...HOME, ...FAR)) < 1, `${far.distanceMeters}`);
        assert.equal(far.displayName, friend.split("-")[0]);
        assert.ok(session.radiusMeters > 8000);
        assert.ok(asked > askedBefore, "the token source is asked when the stream opens");

        await sleep(1100); // reports closer than 1 s to the last shared one are not shared
        await theirs.reportLocation(...NEAR);
        const moved = await until(session, (e) => e.kind === "friendMoved");
        const event = moved.at(-1)!;
        assert.ok(event.kind === "friendMoved" && !event.isNew);
        assert.ok(Math.abs(session.nearby[0]!.distanceMeters - distanceM(...HOME, ...NEAR)) < 1);

        // we move: the SDK recomputes the distance at once, from our own position
        await session.updateLocation(52.52, 13.41);
        assert.ok(Math.abs(session.nearby[0]!.distanceMeters - distanceM(52.52, 13.41, ...NEAR)) < 1e-6);

        assert.equal(await theirs.setVisibility(false), false);
        const left = await until(session, (e) => e.kind === "friendLeft");
        assert.deepEqual(
          (({ kind, userId, reason }) => ({ kind, userId, reason }))(left.at(-1) as { kind: string; userId: string; reason: string }),
          { kind: "friendLeft", userId: friend, reason: "HIDDEN" },
        );
        assert.deepEqual(session.nearby, []);
        assert.equal(session.state, "connected");
        assert.equal(session.connects, 1);
      } finally {
        session.close();
        await theirs.setVisibility(true);
      }
    });

    test("unary errors are typed: a bad coordinate names the field", async () => {
      // bypass the local check to see the server's answer
      const err = await theirs
        .reportLocation(0, 0, new Date(Date.now() + 3_600_000))
        .then(() => undefined, (e: unknown) => e);
      assert.ok(err instanceof NearbyError, String(err));
      assert.equal(err.code, Code.InvalidArgument);
      assert.equal(err.metadata["field"], "recorded_at");
      assert.match(err.serverMessage, /recorded_at/);
    });
  });
}

describe("auth", () => {
  // minted by the test harness with the stack's dev key, expired an hour ago
  const expired = process.env["NEARBY_EXPIRED_TOKEN"] ?? "";

  test("an expired or missing token: AuthError at once, no retry", async () => {
    assert.ok(expired, "set NEARBY_EXPIRED_TOKEN");
    const cases = [
      createNodeClient(BASE, { token: expired }),
      createWebClient(BASE, { token: expired }),
      createWebClient(BASE, { token: expired, protocol: "grpc-web" }),
      createNodeClient(BASE, {}),
      createWebClient(BASE, { token: "" }),
    ];
    for (const client of cases) {
      const session = client.connect(...HOME);
      await assert.rejects(session.next(), (e: unknown) => e instanceof AuthError && e.code === Code.Unauthenticated);
      assert.equal(session.connects, 1);
      assert.equal(session.state, "closed");
    }
    // grpc-web carries Envoy's reason; the Connect protocol gets a bare HTTP 401 from Envoy
    const viaGrpcWeb = await createWebClient(BASE, { token: expired, protocol: "grpc-web" })
      .getVisibility()
      .catch((e: unknown) => e);
    assert.ok(viaGrpcWeb instanceof AuthError && /expired/i.test(viaGrpcWeb.serverMessage), String(viaGrpcWeb));
    const viaConnect = await createWebClient(BASE, { token: expired }).getVisibility().catch((e: unknown) => e);
    assert.ok(viaConnect instanceof AuthError && /refused the token/.test(viaConnect.serverMessage), String(viaConnect));
  });
});
