/**
 * The two ways a session receives the live list: the bidirectional
 * `NearbyService.Connect` (Node, native-style clients: locations travel on
 * the stream) and the server stream `NearbyService.Watch` (browsers: the
 * locations travel as unary `LocationService.ReportLocation` calls).
 */
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { type Page, type ServerMessage, decodePage, decodeServerMessage } from "./events.js";
import { LatLngSchema } from "./gen/nearby/v1/geo_pb.js";
import { LocationService } from "./gen/nearby/v1/location_service_pb.js";
import {
  type ConnectRequest,
  ConnectRequestSchema,
  NearbyService,
} from "./gen/nearby/v1/nearby_service_pb.js";

/** Which RPC a session uses: "bidi" (Connect) or "watch" (Watch + ReportLocation). */
export type StreamMode = "bidi" | "watch";

/** One open stream of decoded server messages. */
export interface LiveStream {
  /** The next server message; undefined when the server ended the stream. Throws on error. */
  next(): Promise<ServerMessage | undefined>;
  /** Sends a new own location. */
  sendLocation(latitude: number, longitude: number): Promise<void>;
  /** Asks for a page: on "bidi" it arrives on the stream (undefined here); on "watch" it is returned. */
  requestPage(pageToken: string, pageSize: number): Promise<Page | undefined>;
  /** Ends the stream (the call is cancelled). */
  close(): void;
}

/** Opens a LiveStream that starts at this location. */
export type StreamOpener = (latitude: number, longitude: number) => Promise<LiveStream>;

/** Pull-based queue of request messages for a bidi call. */
class RequestQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private waiter: ((r: IteratorResult<T>) => void) | undefined;
  private ended = false;

  push(item: T): void {
    if (this.ended) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w({ done: false, value: item });
    } else this.items.push(item);
  }

  end(): void {
    this.ended = true;
    this.waiter?.({ done: true, value: undefined });
    this.waiter = undefined;
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        const item = this.items.shift();
        if (item !== undefined) return Promise.resolve({ done: false, value: item });
        if (this.ended) return Promise.resolve({ done: true, value: undefined });
        return new Promise((resolve) => (this.waiter = resolve));
      },
      // connect-node ends the request side with return()/throw() when the
      // response fails (e.g. a 401 from the edge): the queue just ends
      return: () => {
        this.end();
        return Promise.resolve({ done: true, value: undefined });
      },
      throw: () => {
        this.end();
        return Promise.resolve({ done: true, value: undefined });
      },
    };
  }
}

function locationRequest(latitude: number, longitude: number): ConnectRequest {
  return create(ConnectRequestSchema, {
    kind: {
      case: "location",
      value: {
        position: create(LatLngSchema, { latitude, longitude }),
        recordedAt: timestampNow(),
      },
    },
  });
}

function reader<T extends Parameters<typeof decodeServerMessage>[0]>(
  responses: AsyncIterable<T>,
): () => Promise<ServerMessage | undefined> {
  const it = responses[Symbol.asyncIterator]();
  return async () => {
    const r = await it.next();
    return r.done ? undefined : decodeServerMessage(r.value);
  };
}

/** `NearbyService.Connect`: the location is the first message of the stream. */
export function bidiOpener(nearby: Client<typeof NearbyService>): StreamOpener {
  return async (latitude, longitude) => {
    const abort = new AbortController();
    const requests = new RequestQueue<ConnectRequest>();
    requests.push(locationRequest(latitude, longitude));
    const next = reader(nearby.connect(requests, { signal: abort.signal }));
    return {
      next,
      async sendLocation(lat, lng) {
        requests.push(locationRequest(lat, lng));
      },
      async requestPage(pageToken, pageSize) {
        requests.push(
          create(ConnectRequestSchema, {
            kind: { case: "pageRequest", value: { pageToken, pageSize } },
          }),
        );
        return undefined;
      },
      close() {
        requests.end();
        abort.abort();
      },
    };
  };
}

/**
 * `NearbyService.Watch`: the location is reported first with ReportLocation
 * (Watch answers FAILED_PRECONDITION without one), then every move is a
 * ReportLocation call; pages come from ListNearbyFriends.
 */
export function watchOpener(
  nearby: Client<typeof NearbyService>,
  location: Client<typeof LocationService>,
  timeoutMs: number,
): StreamOpener {
  const report = async (latitude: number, longitude: number): Promise<void> => {
    await location.reportLocation(
      { position: { latitude, longitude }, recordedAt: timestampNow() },
      { timeoutMs },
    );
  };
  return async (latitude, longitude) => {
    await report(latitude, longitude);
    const abort = new AbortController();
    const next = reader(nearby.watch({}, { signal: abort.signal }));
    return {
      next,
      sendLocation: report,
      async requestPage(pageToken, pageSize) {
        return decodePage(
          await nearby.listNearbyFriends({ pageToken, pageSize }, { timeoutMs }),
        );
      },
      close() {
        abort.abort();
      },
    };
  };
}
