/**
 * One live nearby list that survives reconnects (the same rules as the
 * Python SDK's NearbySession).
 *
 * The session is pull-based: the stream is read only while you iterate it,
 * so a slow consumer applies back-pressure (the server coalesces and, if you
 * fall too far behind, asks you to reconnect) instead of buffering without
 * bound. `session.nearby` is as current as the last event you consumed.
 */
import { Backoff, type BackoffPolicy } from "./backoff.js";
import { Code, FATAL_CODES, NearbyError, codeName, fromError } from "./errors.js";
import type { Event, NearbyFriend, ServerMessage } from "./events.js";
import { checkPosition } from "./geo.js";
import type { LiveStream, StreamOpener } from "./streams.js";
import { NearbyView } from "./view.js";

/** Where a session is: not opened yet, opening its first stream, live, between streams, or ended. */
export type SessionState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

export interface SessionOptions {
  readonly backoff: BackoffPolicy;
  /** Random source of the jitter (tests pass a fixed one). */
  readonly random?: () => number;
}

/**
 * A live view of your nearby friends.
 *
 * Create it with `client.connect(lat, lng)`. The stream opens on the first
 * iteration or on `start()`. Iterate it (`for await (const event of session)`)
 * to receive typed events. Heartbeats are absorbed. When the stream breaks
 * (UNAVAILABLE, connection loss, a server drain or any other transient status)
 * the session yields a `reconnecting` event, waits (exponential backoff with
 * full jitter, or the server's `retry_after`), reconnects from the last known
 * location and yields the new snapshot, which replaces `nearby`.
 * UNAUTHENTICATED / PERMISSION_DENIED throw an AuthError; other non-retryable
 * statuses a NearbyError. Breaking out of the loop does not close the session.
 */
export class NearbySession implements AsyncIterable<Event> {
  private readonly view = new NearbyView();
  private readonly backoff: Backoff;
  private stream: LiveStream | undefined;
  private readonly pending: Event[] = [];
  private delayMs: number | undefined;
  private wake: (() => void) | undefined;
  private stateValue: SessionState = "idle";
  private lastLocation: [number, number];
  /** How many times a stream has been opened (1 + reconnects). */
  connects = 0;
  /** Why the stream last ended, for display ("" while never broken). */
  lastError = "";

  constructor(
    private readonly opener: StreamOpener,
    latitude: number,
    longitude: number,
    options: SessionOptions,
    private readonly onClose?: (session: NearbySession) => void,
  ) {
    checkPosition(latitude, longitude);
    this.lastLocation = [latitude, longitude];
    this.backoff = new Backoff(options.backoff, options.random);
  }

  /** Known nearby friends, nearest first (ties by user id). */
  get nearby(): NearbyFriend[] {
    return this.view.friends;
  }

  /** How many friends are nearby in all (may exceed nearby.length until all pages are fetched). */
  get totalSize(): number {
    return this.view.totalSize;
  }

  /** Token for requestPage ("" when everything is loaded). */
  get nextPageToken(): string {
    return this.view.nextPageToken;
  }

  /** The server's radius in metres (known after the first snapshot). */
  get radiusMeters(): number {
    return this.view.radiusMeters;
  }

  /** Your last location [latitude, longitude], sent again on reconnect. */
  get location(): readonly [number, number] {
    return this.lastLocation;
  }

  get state(): SessionState {
    return this.stateValue;
  }

  get closed(): boolean {
    return this.stateValue === "closed";
  }

  /** Opens the stream (does nothing if open). Errors surface on iteration. */
  async start(): Promise<void> {
    if (this.closed) throw new Error("the session is closed");
    if (this.stream === undefined && this.delayMs === undefined) {
      try {
        await this.open();
      } catch (error) {
        this.ended(error); // fatal errors are thrown on the next iteration
      }
    }
  }

  /**
   * Sends your new location. It is remembered and sent first after a
   * reconnect; while the stream is down it is only remembered. Throws
   * RangeError for coordinates out of range, and the call's error (a
   * NearbyError) when a Watch session's ReportLocation fails.
   */
  async updateLocation(latitude: number, longitude: number): Promise<void> {
    checkPosition(latitude, longitude);
    this.lastLocation = [latitude, longitude];
    this.view.recenter(latitude, longitude);
    const stream = this.stream;
    if (stream === undefined) return;
    try {
      await stream.sendLocation(latitude, longitude);
    } catch (error) {
      throw fromError(error);
    }
  }

  /**
   * Asks for the page after `pageToken`; it arrives as a `page` event (and is
   * added to `nearby`). Throws NearbyError (UNAVAILABLE) when no stream is open.
   */
  async requestPage(pageToken: string, pageSize = 0): Promise<void> {
    if (pageSize < 0) throw new RangeError("pageSize must not be negative");
    const stream = this.stream;
    if (stream === undefined) {
      throw new NearbyError(
        Code.Unavailable,
        "the stream is not open: wait for the next snapshot and ask again",
      );
    }
    let page;
    try {
      page = await stream.requestPage(pageToken, pageSize);
    } catch (error) {
      throw fromError(error);
    }
    if (page !== undefined) {
      this.view.applyPage(page);
      this.push(page);
    }
  }

  /** Ends the stream; iteration stops. Safe to call more than once. */
  close(): void {
    if (this.closed) return;
    this.stateValue = "closed";
    this.pending.length = 0;
    this.dropStream();
    this.wake?.();
    this.onClose?.(this);
  }

  [Symbol.asyncIterator](): AsyncIterator<Event> {
    return {
      next: () => this.next(),
      // breaking out of a for-await loop leaves the session open
      return: async () => ({ done: true, value: undefined }),
    };
  }

  /** The next event; done once the session is closed. */
  async next(): Promise<IteratorResult<Event>> {
    for (;;) {
      if (this.closed) return { done: true, value: undefined };
      const event = this.pending.shift();
      if (event !== undefined) return { done: false, value: event };
      if (this.stream === undefined) {
        if (this.delayMs !== undefined) {
          await this.sleep(this.delayMs);
          this.delayMs = undefined;
          continue;
        }
        try {
          await this.open();
        } catch (error) {
          this.ended(error);
        }
        continue;
      }
      const stream = this.stream;
      let message: ServerMessage | undefined;
      try {
        message = await stream.next();
      } catch (error) {
        if (this.stream === stream) this.ended(error);
        continue;
      }
      if (this.stream !== stream) continue; // dropped meanwhile (close, reconnect)
      if (message === undefined) {
        this.ended(undefined);
        continue;
      }
      this.handle(message);
    }
  }

  // -- internals -------------------------------------------------------------

  private push(event: Event): void {
    this.pending.push(event);
  }

  private async open(): Promise<void> {
    this.stateValue = this.connects === 0 ? "connecting" : "reconnecting";
    this.connects += 1;
    const stream = await this.opener(...this.lastLocation);
    if (this.closed) {
      stream.close();
      return;
    }
    this.stream = stream;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done(): void {
        clearTimeout(timer);
        self.wake = undefined;
        resolve();
      }
      this.wake = done;
    });
  }

  private dropStream(): void {
    const stream = this.stream;
    this.stream = undefined;
    stream?.close();
  }

  /** A stream (or its opening) ended: raise, or schedule a reconnect. */
  private ended(error: unknown): void {
    this.dropStream();
    if (this.closed) return;
    if (error === undefined) {
      this.lastError = "the server ended the stream";
      this.scheduleReconnect(this.lastError, undefined);
      return;
    }
    const nearbyError = fromError(error);
    this.lastError = `${codeName(nearbyError.code)}: ${nearbyError.serverMessage}`;
    if (FATAL_CODES.has(nearbyError.code)) this.fail(nearbyError);
    this.scheduleReconnect(this.lastError, undefined);
  }

  private scheduleReconnect(cause: string, retryAfterMs: number | undefined): void {
    if (this.backoff.exhausted()) {
      this.fail(
        new NearbyError(
          Code.Unavailable,
          `gave up after ${this.backoff.attempt} reconnect attempts; last: ${cause}`,
        ),
      );
    }
    const jittered = this.backoff.nextDelayMs();
    const delayMs = retryAfterMs ?? jittered;
    this.delayMs = delayMs;
    this.stateValue = "reconnecting";
    this.push({ kind: "reconnecting", attempt: this.backoff.attempt, delayMs, cause });
  }

  private fail(error: NearbyError): never {
    this.close();
    throw error;
  }

  private handle(message: ServerMessage): void {
    switch (message.kind) {
      case "snapshot":
        this.view.applySnapshot(message.snapshot);
        this.backoff.reset();
        this.stateValue = "connected";
        this.lastError = "";
        this.push(message.snapshot);
        break;
      case "page":
        this.view.applyPage(message.page);
        this.push(message.page);
        break;
      case "changes":
        for (const change of message.changes) {
          const receivedAt = new Date();
          if (change.kind === "update") {
            const isNew = this.view.applyMoved(change.friend);
            this.push({ kind: "friendMoved", friend: change.friend, isNew, receivedAt });
          } else {
            this.view.applyLeft(change.userId);
            this.push({
              kind: "friendLeft",
              userId: change.userId,
              reason: change.reason,
              receivedAt,
            });
          }
        }
        break;
      case "reconnect":
        this.dropStream();
        this.lastError = `server asked to reconnect: ${message.reason}`;
        this.scheduleReconnect(this.lastError, message.retryAfterMs);
        break;
      default:
        break; // heartbeats (and kinds unknown to this SDK version) are absorbed
    }
  }
}
