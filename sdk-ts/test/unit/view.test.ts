import assert from "node:assert/strict";
import { test } from "node:test";
import type { NearbyFriend, Snapshot } from "../../src/events.js";
import { distanceM } from "../../src/geo.js";
import { NearbyView } from "../../src/view.js";

const friend = (userId: string, distanceMeters: number, latitude = 0, longitude = 0): NearbyFriend => ({
  userId,
  displayName: userId.toUpperCase(),
  latitude,
  longitude,
  distanceMeters,
  updatedAt: new Date(0),
});

const snapshot = (friends: NearbyFriend[], totalSize = friends.length, nextPageToken = ""): Snapshot => ({
  kind: "snapshot",
  friends,
  totalSize,
  nextPageToken,
  radiusMeters: 8047,
  receivedAt: new Date(),
});

test("haversine: one degree of latitude is about 111.2 km; same point is 0", () => {
  assert.ok(Math.abs(distanceM(0, 0, 1, 0) - 111_195) < 1);
  assert.equal(distanceM(52.52, 13.405, 52.52, 13.405), 0);
  // Berlin: 2 km east along the parallel, as the Python SDK's README example
  assert.equal(Math.round(distanceM(52.52, 13.405, 52.52, 13.4344)), 1989);
});

test("sorted by distance, then user id; a snapshot replaces everything", () => {
  const view = new NearbyView();
  view.applySnapshot(snapshot([friend("c", 30), friend("b", 10), friend("a", 10)]));
  assert.deepEqual(view.friends.map((f) => f.userId), ["a", "b", "c"]);
  view.applySnapshot(snapshot([friend("z", 5)]));
  assert.deepEqual(view.friends.map((f) => f.userId), ["z"]);
  assert.equal(view.radiusMeters, 8047);
});

test("moves reorder; newcomers count only when the list is complete", () => {
  const view = new NearbyView();
  view.applySnapshot(snapshot([friend("a", 10), friend("b", 20)]));
  assert.equal(view.applyMoved(friend("a", 30)), false);
  assert.deepEqual(view.friends.map((f) => f.userId), ["b", "a"]);
  assert.equal(view.applyMoved(friend("c", 1)), true);
  assert.equal(view.totalSize, 3);
  assert.equal(view.applyLeft("b"), true);
  assert.equal(view.applyLeft("nobody"), false);
  assert.deepEqual(view.friends.map((f) => f.userId), ["c", "a"]);
  assert.equal(view.totalSize, 2);
});

test("with pages outstanding, an unseen friend is not counted twice", () => {
  const view = new NearbyView();
  view.applySnapshot(snapshot([friend("a", 10)], 3, "next"));
  assert.equal(view.complete, false);
  view.applyMoved(friend("x", 5)); // may be on the unfetched page
  assert.equal(view.totalSize, 3);
  view.applyLeft("y"); // a departure of an unseen friend still lowers the count
  assert.equal(view.totalSize, 2);
  view.applyPage({ kind: "page", friends: [friend("y2", 50)], totalSize: 3, nextPageToken: "", receivedAt: new Date() });
  assert.equal(view.nextPageToken, "");
  assert.deepEqual(view.friends.map((f) => f.userId), ["x", "a", "y2"]);
});

test("recenter recomputes every distance and the order from the new position", () => {
  const view = new NearbyView();
  view.applySnapshot(snapshot([friend("east", 100, 0, 0.01), friend("west", 200, 0, -0.01)]));
  view.recenter(0, -0.009);
  const [first, second] = view.friends;
  assert.equal(first?.userId, "west");
  assert.ok(Math.abs(first!.distanceMeters - distanceM(0, -0.009, 0, -0.01)) < 1e-9);
  assert.ok(Math.abs(second!.distanceMeters - distanceM(0, -0.009, 0, 0.01)) < 1e-9);
});
