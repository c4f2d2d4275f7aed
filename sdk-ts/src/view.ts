/**
 * The client-side nearby list, kept current from stream events. Pure logic
 * (no I/O), the same rules as the Python SDK's NearbyView.
 */
import type { NearbyFriend, Page, Snapshot } from "./events.js";
import { distanceM } from "./geo.js";

const byDistance = (a: NearbyFriend, b: NearbyFriend): number =>
  a.distanceMeters - b.distanceMeters || (a.userId < b.userId ? -1 : a.userId > b.userId ? 1 : 0);

/**
 * Nearby friends by id, sorted on demand by (distance, user id).
 *
 * `totalSize` follows the server's count. The snapshot carries only the first
 * page: an update for someone not yet seen counts as a newcomer only when the
 * whole list is known (otherwise it may be a friend on a page not fetched
 * yet); a departure always lowers the count, since the server only reports
 * departures of friends that were inside the radius.
 */
export class NearbyView {
  private byId = new Map<string, NearbyFriend>();
  private sorted: NearbyFriend[] | undefined = [];
  private total = 0;
  radiusMeters = 0;
  nextPageToken = "";

  /** The known nearby friends, nearest first (ties by user id). A copy. */
  get friends(): NearbyFriend[] {
    this.sorted ??= [...this.byId.values()].sort(byDistance);
    return [...this.sorted];
  }

  /** How many friends are nearby in all (at least as many as are known). */
  get totalSize(): number {
    return Math.max(this.total, this.byId.size);
  }

  /** True when every nearby friend is known. */
  get complete(): boolean {
    return this.byId.size >= this.total;
  }

  get size(): number {
    return this.byId.size;
  }

  get(userId: string): NearbyFriend | undefined {
    return this.byId.get(userId);
  }

  has(userId: string): boolean {
    return this.byId.has(userId);
  }

  clear(): void {
    this.byId.clear();
    this.sorted = [];
    this.total = 0;
    this.nextPageToken = "";
  }

  /** Replaces the whole view with the snapshot. */
  applySnapshot(snapshot: Snapshot): void {
    this.byId = new Map(snapshot.friends.map((f) => [f.userId, f]));
    this.sorted = undefined;
    this.total = snapshot.totalSize;
    this.radiusMeters = snapshot.radiusMeters;
    this.nextPageToken = snapshot.nextPageToken;
  }

  /** Adds a further page (the server's count is the fresher one). */
  applyPage(page: Page): void {
    for (const f of page.friends) this.byId.set(f.userId, f);
    this.sorted = undefined;
    this.total = page.totalSize;
    this.nextPageToken = page.nextPageToken;
  }

  /** Adds or updates a friend; true when the friend was not known. */
  applyMoved(friend: NearbyFriend): boolean {
    const wasComplete = this.complete;
    const isNew = !this.byId.has(friend.userId);
    this.byId.set(friend.userId, friend);
    this.sorted = undefined;
    if (isNew && wasComplete) this.total += 1;
    return isNew;
  }

  /** Removes a friend; true when the friend was known. */
  applyLeft(userId: string): boolean {
    const wasComplete = this.complete;
    const known = this.byId.delete(userId);
    this.sorted = undefined;
    if (known || !wasComplete) this.total = Math.max(0, this.total - 1);
    return known;
  }

  /**
   * Recomputes distances from a new own position (the server reports who
   * enters or leaves; this keeps the distances and the order of those who
   * stay accurate until their next update).
   */
  recenter(latitude: number, longitude: number): void {
    for (const [id, f] of this.byId) {
      this.byId.set(id, {
        ...f,
        distanceMeters: distanceM(latitude, longitude, f.latitude, f.longitude),
      });
    }
    this.sorted = undefined;
  }
}
