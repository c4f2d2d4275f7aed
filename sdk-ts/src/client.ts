/**
 * NearbyClient: every call of the public API through the edge (Envoy), with
 * the user's bearer token, typed results and typed errors. Build one with
 * `createNodeClient` (from "@nearby/sdk/node") or `createWebClient` (from
 * "@nearby/sdk/web"), or pass any Connect transport.
 */
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type Client, type Interceptor, type Transport, createClient } from "@connectrpc/connect";
import { type BackoffPolicy, backoffPolicy } from "./backoff.js";
import { Code, fromError, makeError } from "./errors.js";
import { type Page, decodePage } from "./events.js";
import { FriendRequestDirection, FriendService } from "./gen/nearby/v1/friend_service_pb.js";
import { LocationService, ReportDisposition } from "./gen/nearby/v1/location_service_pb.js";
import { NearbyService } from "./gen/nearby/v1/nearby_service_pb.js";
import { PresenceService, Visibility } from "./gen/nearby/v1/presence_service_pb.js";
import type { User as UserMessage } from "./gen/nearby/v1/user_pb.js";
import { checkPosition } from "./geo.js";
import { NearbySession } from "./session.js";
import { type StreamMode, bidiOpener, watchOpener } from "./streams.js";

/** The bearer token, or a function returning the current one (asked on every call and every reconnect). */
export type TokenSource = string | (() => string | Promise<string>);

/** A user's public profile. */
export interface User {
  readonly userId: string;
  readonly displayName: string;
  readonly createTime: Date;
}

/** A pending friend request. */
export interface FriendRequest {
  readonly fromUser: User;
  readonly toUser: User;
  readonly createTime: Date;
}

/** The answer to ReportLocation. */
export interface ReportResult {
  /**
   * "ACCEPTED" (shared and in the history), "COALESCED" (sooner than the
   * server's minimum interval after the last shared one: cached only) or
   * "STALE" (older than the cached one: history only).
   */
  readonly disposition: "ACCEPTED" | "COALESCED" | "STALE" | "UNSPECIFIED";
}

export interface ClientOptions {
  /** Which live RPC `connect` uses: "bidi" (Connect, needs HTTP/2 both ways) or "watch". */
  readonly mode: StreamMode;
  /** Reconnect policy of the sessions. */
  readonly backoff?: Partial<BackoffPolicy>;
  /** Deadline of each unary call (default 10 s). */
  readonly timeoutMs?: number;
}

/** Sends `authorization: Bearer <token>`, asking the token source on every call. */
export function authInterceptor(token: TokenSource | undefined): Interceptor {
  return (next) => async (req) => {
    let value: string;
    try {
      value = typeof token === "function" ? await token() : (token ?? "");
    } catch (error) {
      throw makeError(Code.Unauthenticated, `the token source failed: ${String(error)}`);
    }
    if (value) req.header.set("authorization", `Bearer ${value}`);
    return next(req);
  };
}

function user(msg: UserMessage | undefined): User {
  return {
    userId: msg?.userId ?? "",
    displayName: msg?.displayName ?? "",
    createTime: msg?.createTime ? timestampDate(msg.createTime) : new Date(0),
  };
}

async function call<T>(promise: Promise<T>): Promise<T> {
  try {
    return await promise;
  } catch (error) {
    throw fromError(error);
  }
}

/** An async client of the nearby API, through the edge. */
export class NearbyClient {
  readonly mode: StreamMode;
  readonly backoff: BackoffPolicy;
  readonly timeoutMs: number;
  private readonly friends: Client<typeof FriendService>;
  private readonly location: Client<typeof LocationService>;
  private readonly presence: Client<typeof PresenceService>;
  private readonly nearbyRpc: Client<typeof NearbyService>;
  private readonly sessions = new Set<NearbySession>();

  /** `transport` must carry authInterceptor(token) (the factories do). */
  constructor(transport: Transport, options: ClientOptions) {
    this.mode = options.mode;
    this.backoff = backoffPolicy(options.backoff);
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.friends = createClient(FriendService, transport);
    this.location = createClient(LocationService, transport);
    this.presence = createClient(PresenceService, transport);
    this.nearbyRpc = createClient(NearbyService, transport);
  }

  private get opts(): { timeoutMs: number } {
    return { timeoutMs: this.timeoutMs };
  }

  /** A live session starting at this location (opens on first use). */
  connect(
    latitude: number,
    longitude: number,
    options: { backoff?: Partial<BackoffPolicy>; random?: () => number } = {},
  ): NearbySession {
    const opener =
      this.mode === "bidi"
        ? bidiOpener(this.nearbyRpc)
        : watchOpener(this.nearbyRpc, this.location, this.timeoutMs);
    const backoff = options.backoff ? backoffPolicy(options.backoff) : this.backoff;
    const session = new NearbySession(
      opener,
      latitude,
      longitude,
      { backoff, ...(options.random ? { random: options.random } : {}) },
      (s) => this.sessions.delete(s),
    );
    this.sessions.add(session);
    return session;
  }

  /** Closes every open session. */
  close(): void {
    for (const session of [...this.sessions]) session.close();
  }

  /** One page of your nearby friends, from your last reported location (FAILED_PRECONDITION without one). */
  async listNearbyFriends(pageToken = "", pageSize = 0): Promise<Page> {
    return decodePage(
      await call(this.nearbyRpc.listNearbyFriends({ pageToken, pageSize }, this.opts)),
    );
  }

  /** Creates a user (needs an admin token). An empty userId lets the server choose. */
  async createUser(displayName: string, userId = ""): Promise<User> {
    return user((await call(this.friends.createUser({ userId, displayName }, this.opts))).user);
  }

  /** A user's profile; empty userId means you. */
  async getUser(userId = ""): Promise<User> {
    return user((await call(this.friends.getUser({ userId }, this.opts))).user);
  }

  async sendFriendRequest(toUserId: string): Promise<void> {
    await call(this.friends.sendFriendRequest({ toUserId }, this.opts));
  }

  async acceptFriendRequest(fromUserId: string): Promise<void> {
    await call(this.friends.acceptFriendRequest({ fromUserId }, this.opts));
  }

  async declineFriendRequest(fromUserId: string): Promise<void> {
    await call(this.friends.declineFriendRequest({ fromUserId }, this.opts));
  }

  /** Pending requests sent to you ("incoming") or by you ("outgoing"), newest first, every page. */
  async listFriendRequests(direction: "incoming" | "outgoing" = "incoming"): Promise<FriendRequest[]> {
    const out: FriendRequest[] = [];
    const which =
      direction === "incoming" ? FriendRequestDirection.INCOMING : FriendRequestDirection.OUTGOING;
    let pageToken = "";
    do {
      const response = await call(
        this.friends.listFriendRequests({ direction: which, pageToken }, this.opts),
      );
      for (const r of response.friendRequests) {
        out.push({
          fromUser: user(r.fromUser),
          toUser: user(r.toUser),
          createTime: r.createTime ? timestampDate(r.createTime) : new Date(0),
        });
      }
      pageToken = response.nextPageToken;
    } while (pageToken);
    return out;
  }

  async removeFriend(friendUserId: string): Promise<void> {
    await call(this.friends.removeFriend({ friendUserId }, this.opts));
  }

  /** Your friends, ordered by user id, every page. */
  async listFriends(): Promise<User[]> {
    const out: User[] = [];
    let pageToken = "";
    do {
      const response = await call(this.friends.listFriends({ pageToken }, this.opts));
      out.push(...response.friends.map((f) => user(f.user)));
      pageToken = response.nextPageToken;
    } while (pageToken);
    return out;
  }

  /** Reports your location without a session (recordedAt: now). */
  async reportLocation(
    latitude: number,
    longitude: number,
    recordedAt: Date = new Date(),
  ): Promise<ReportResult> {
    checkPosition(latitude, longitude);
    const response = await call(
      this.location.reportLocation(
        { position: { latitude, longitude }, recordedAt: timestampFromDate(recordedAt) },
        this.opts,
      ),
    );
    const names = {
      [ReportDisposition.ACCEPTED]: "ACCEPTED",
      [ReportDisposition.COALESCED]: "COALESCED",
      [ReportDisposition.STALE]: "STALE",
      [ReportDisposition.UNSPECIFIED]: "UNSPECIFIED",
    } as const;
    return { disposition: names[response.disposition] };
  }

  /** Shares your location (true) or hides it: ghost mode (false). Returns the setting in force. */
  async setVisibility(visible: boolean): Promise<boolean> {
    const visibility = visible ? Visibility.VISIBLE : Visibility.HIDDEN;
    const response = await call(this.presence.setVisibility({ visibility }, this.opts));
    return response.visibility === Visibility.VISIBLE;
  }

  /** True when your location is shared with friends (not in ghost mode). */
  async getVisibility(): Promise<boolean> {
    const response = await call(this.presence.getVisibility({}, this.opts));
    return response.visibility !== Visibility.HIDDEN;
  }
}
