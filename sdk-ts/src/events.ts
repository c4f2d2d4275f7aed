/**
 * Typed values the SDK hands out (nearby friends and stream events), and the
 * pure decoding of server messages into them. Application code never touches
 * wire types.
 */
import { durationMs, timestampDate } from "@bufbuild/protobuf/wkt";
import type {
  ConnectResponse,
  FriendGone,
  ListNearbyFriendsResponse,
  NearbyFriend as NearbyFriendMessage,
  NearbyFriendsPage,
  Snapshot as SnapshotMessage,
  WatchResponse,
} from "./gen/nearby/v1/nearby_service_pb.js";
import { FriendGoneReason } from "./gen/nearby/v1/nearby_service_pb.js";

/** Why a friend left the list. */
export type LeftReason = "OUT_OF_RANGE" | "OFFLINE" | "UNFRIENDED" | "HIDDEN" | "UNSPECIFIED";

/** A friend within the radius, as last reported by the server. */
export interface NearbyFriend {
  readonly userId: string;
  readonly displayName: string;
  /** Degrees, where the friend was at `updatedAt`. */
  readonly latitude: number;
  readonly longitude: number;
  /** Great-circle distance from you, in metres. */
  readonly distanceMeters: number;
  /** When the friend's device took this fix. */
  readonly updatedAt: Date;
}

/** The nearby list as of (re)connection; it REPLACES everything known before. */
export interface Snapshot {
  readonly kind: "snapshot";
  /** The first page, sorted by distance then user id. */
  readonly friends: readonly NearbyFriend[];
  /** How many friends are nearby in all. */
  readonly totalSize: number;
  /** Pass to `requestPage` for more; "" if none. */
  readonly nextPageToken: string;
  /** The radius the server uses, in metres. */
  readonly radiusMeters: number;
  readonly receivedAt: Date;
}

/** A further page of the nearby list. */
export interface Page {
  readonly kind: "page";
  readonly friends: readonly NearbyFriend[];
  readonly totalSize: number;
  readonly nextPageToken: string;
  readonly receivedAt: Date;
}

/** A friend is within the radius: new in the list, or moved. */
export interface FriendMoved {
  readonly kind: "friendMoved";
  readonly friend: NearbyFriend;
  /** True when the friend was not in `session.nearby` before. */
  readonly isNew: boolean;
  readonly receivedAt: Date;
}

/** A friend left the nearby list. */
export interface FriendLeft {
  readonly kind: "friendLeft";
  readonly userId: string;
  readonly reason: LeftReason;
  readonly receivedAt: Date;
}

/** The stream ended; the session reconnects by itself after `delayMs`. */
export interface Reconnecting {
  readonly kind: "reconnecting";
  /** Consecutive attempts since the last healthy connection (1-based). */
  readonly attempt: number;
  readonly delayMs: number;
  /** Why, e.g. "unavailable: ..." or "server asked to reconnect: draining". */
  readonly cause: string;
}

/** Anything a session yields. */
export type Event = Snapshot | Page | FriendMoved | FriendLeft | Reconnecting;

/** One change inside a server batch, before it is applied to a view. */
export type Change =
  | { readonly kind: "update"; readonly friend: NearbyFriend }
  | { readonly kind: "gone"; readonly userId: string; readonly reason: LeftReason };

/** A server message of either stream (Connect or Watch), decoded. */
export type ServerMessage =
  | { readonly kind: "snapshot"; readonly snapshot: Snapshot }
  | { readonly kind: "page"; readonly page: Page }
  | { readonly kind: "changes"; readonly changes: readonly Change[] }
  | { readonly kind: "heartbeat" }
  | { readonly kind: "reconnect"; readonly reason: string; readonly retryAfterMs: number }
  | { readonly kind: "unknown" };

export function decodeFriend(msg: NearbyFriendMessage): NearbyFriend {
  return {
    userId: msg.userId,
    displayName: msg.displayName,
    latitude: msg.position?.latitude ?? 0,
    longitude: msg.position?.longitude ?? 0,
    distanceMeters: msg.distanceMeters,
    updatedAt: msg.updateTime ? timestampDate(msg.updateTime) : new Date(0),
  };
}

export function decodeReason(reason: FriendGoneReason): LeftReason {
  switch (reason) {
    case FriendGoneReason.OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case FriendGoneReason.OFFLINE:
      return "OFFLINE";
    case FriendGoneReason.UNFRIENDED:
      return "UNFRIENDED";
    case FriendGoneReason.HIDDEN:
      return "HIDDEN";
    default:
      return "UNSPECIFIED";
  }
}

export function decodeGone(msg: FriendGone): Change {
  return { kind: "gone", userId: msg.userId, reason: decodeReason(msg.reason) };
}

export function decodeSnapshot(msg: SnapshotMessage, receivedAt = new Date()): Snapshot {
  return {
    kind: "snapshot",
    friends: msg.friends.map(decodeFriend),
    totalSize: msg.totalSize,
    nextPageToken: msg.nextPageToken,
    radiusMeters: msg.radiusMeters,
    receivedAt,
  };
}

export function decodePage(
  msg: NearbyFriendsPage | ListNearbyFriendsResponse,
  receivedAt = new Date(),
): Page {
  return {
    kind: "page",
    friends: msg.friends.map(decodeFriend),
    totalSize: msg.totalSize,
    nextPageToken: msg.nextPageToken,
    receivedAt,
  };
}

/** Decodes a ConnectResponse or a WatchResponse (kinds unknown to this SDK: "unknown"). */
export function decodeServerMessage(msg: ConnectResponse | WatchResponse): ServerMessage {
  const kind = msg.kind;
  switch (kind.case) {
    case "snapshot":
      return { kind: "snapshot", snapshot: decodeSnapshot(kind.value) };
    case "page":
      return { kind: "page", page: decodePage(kind.value) };
    case "events": {
      const changes: Change[] = [];
      for (const ev of kind.value.events) {
        if (ev.kind.case === "friendUpdate" && ev.kind.value.friend) {
          changes.push({ kind: "update", friend: decodeFriend(ev.kind.value.friend) });
        } else if (ev.kind.case === "friendGone") {
          changes.push(decodeGone(ev.kind.value));
        }
      }
      return { kind: "changes", changes };
    }
    case "heartbeat":
      return { kind: "heartbeat" };
    case "reconnect": {
      const after = kind.value.retryAfter ? durationMs(kind.value.retryAfter) : 0;
      return {
        kind: "reconnect",
        reason: kind.value.reason || "no reason given",
        retryAfterMs: Math.max(0, after),
      };
    }
    default:
      return { kind: "unknown" };
  }
}
