import assert from "node:assert/strict";
import { test } from "node:test";
import { create, toBinary, fromBinary } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { BinaryWriter } from "@bufbuild/protobuf/wire";
import { Code, ConnectError } from "@connectrpc/connect";
import { AuthError, NearbyError, codeName, decodeErrorInfo, fromError } from "../../src/errors.js";
import { decodeServerMessage } from "../../src/events.js";
import {
  ConnectResponseSchema,
  FriendGoneReason,
  WatchResponseSchema,
} from "../../src/gen/nearby/v1/nearby_service_pb.js";

const bob = {
  userId: "bob",
  displayName: "Bob",
  position: { latitude: 52.52, longitude: 13.4344 },
  distanceMeters: 1989.2,
  updateTime: timestampFromMs(1_700_000_000_000),
};

test("a Watch snapshot decodes to typed friends (wire round trip)", () => {
  const wire = toBinary(
    WatchResponseSchema,
    create(WatchResponseSchema, {
      kind: { case: "snapshot", value: { friends: [bob], totalSize: 3, nextPageToken: "t", radiusMeters: 8047 } },
    }),
  );
  const decoded = decodeServerMessage(fromBinary(WatchResponseSchema, wire));
  assert.equal(decoded.kind, "snapshot");
  if (decoded.kind !== "snapshot") return;
  const { friends, totalSize, nextPageToken, radiusMeters } = decoded.snapshot;
  assert.deepEqual(
    { friends, totalSize, nextPageToken, radiusMeters },
    {
      friends: [
        {
          userId: "bob",
          displayName: "Bob",
          latitude: 52.52,
          longitude: 13.4344,
          distanceMeters: 1989.2,
          updatedAt: new Date(1_700_000_000_000),
        },
      ],
      totalSize: 3,
      nextPageToken: "t",
      radiusMeters: 8047,
    },
  );
});

test("events keep their order; every gone reason has a name", () => {
  const msg = create(ConnectResponseSchema, {
    kind: {
      case: "events",
      value: {
        events: [
          { kind: { case: "friendUpdate", value: { friend: bob } } },
          ...[
            FriendGoneReason.OUT_OF_RANGE,
            FriendGoneReason.OFFLINE,
            FriendGoneReason.UNFRIENDED,
            FriendGoneReason.HIDDEN,
            99 as FriendGoneReason,
          ].map((reason) => ({ kind: { case: "friendGone" as const, value: { userId: "carol", reason } } })),
        ],
      },
    },
  });
  const decoded = decodeServerMessage(msg);
  assert.equal(decoded.kind, "changes");
  if (decoded.kind !== "changes") return;
  assert.deepEqual(
    decoded.changes.map((c) => (c.kind === "update" ? `update:${c.friend.userId}` : `gone:${c.reason}`)),
    ["update:bob", "gone:OUT_OF_RANGE", "gone:OFFLINE", "gone:UNFRIENDED", "gone:HIDDEN", "gone:UNSPECIFIED"],
  );
});

test("reconnect carries retry_after in ms; heartbeats and unknown kinds are recognised", () => {
  const reconnect = decodeServerMessage(
    create(WatchResponseSchema, {
      kind: { case: "reconnect", value: { reason: "draining", retryAfter: durationFromMs(1250) } },
    }),
  );
  assert.deepEqual(reconnect, { kind: "reconnect", reason: "draining", retryAfterMs: 1250 });
  const bare = decodeServerMessage(create(WatchResponseSchema, { kind: { case: "reconnect", value: {} } }));
  assert.deepEqual(bare, { kind: "reconnect", reason: "no reason given", retryAfterMs: 0 });
  assert.deepEqual(
    decodeServerMessage(create(WatchResponseSchema, { kind: { case: "heartbeat", value: {} } })),
    { kind: "heartbeat" },
  );
  assert.deepEqual(decodeServerMessage(create(WatchResponseSchema, {})), { kind: "unknown" });
});

test("errors: ErrorInfo reason and metadata; AuthError for auth codes", () => {
  const w = new BinaryWriter();
  w.tag(1, 2).string("INVALID_FIELD");
  w.tag(2, 2).string("nearby.v1");
  w.tag(3, 2).fork().tag(1, 2).string("field").tag(2, 2).string("position.latitude").join();
  const bytes = w.finish();
  assert.deepEqual(decodeErrorInfo(bytes), {
    reason: "INVALID_FIELD",
    domain: "nearby.v1",
    metadata: { field: "position.latitude" },
  });
  const ce = new ConnectError("position.latitude: must be within [-90, 90]", Code.InvalidArgument);
  ce.details.push({ type: "google.rpc.ErrorInfo", value: bytes });
  const err = fromError(ce);
  assert.ok(err instanceof NearbyError && !(err instanceof AuthError));
  assert.equal(err.reason, "INVALID_FIELD");
  assert.equal(err.metadata["field"], "position.latitude");
  assert.equal(err.message, "INVALID_ARGUMENT (INVALID_FIELD): position.latitude: must be within [-90, 90]");
  assert.ok(fromError(new ConnectError("expired", Code.Unauthenticated)) instanceof AuthError);
  assert.ok(fromError(new ConnectError("no", Code.PermissionDenied)) instanceof AuthError);
  assert.equal(codeName(Code.FailedPrecondition), "FAILED_PRECONDITION");
  assert.equal(codeName(Code.DeadlineExceeded), "DEADLINE_EXCEEDED");
});
