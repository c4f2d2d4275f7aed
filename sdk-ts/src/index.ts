/**
 * @nearby/sdk: TypeScript client of the nearby backend.
 *
 *     import { createNodeClient } from "@nearby/sdk/node"; // or createWebClient from "@nearby/sdk/web"
 *     const client = createNodeClient("http://localhost:8080", { token });
 *     const session = client.connect(52.52, 13.405);
 *     for await (const event of session) console.log(event.kind, session.nearby);
 *
 * The generated messages and service descriptors of the public API are
 * exported as `v1` (protoc-gen-es).
 */
export { Backoff, type BackoffPolicy, DEFAULT_BACKOFF, backoffPolicy, ceilingMs } from "./backoff.js";
export {
  type ClientOptions,
  type FriendRequest,
  NearbyClient,
  type ReportResult,
  type TokenSource,
  type User,
  authInterceptor,
} from "./client.js";
export {
  AuthError,
  Code,
  FATAL_CODES,
  NearbyError,
  codeName,
  decodeErrorInfo,
  fromError,
  makeError,
} from "./errors.js";
export {
  type Change,
  type Event,
  type FriendLeft,
  type FriendMoved,
  type LeftReason,
  type NearbyFriend,
  type Page,
  type Reconnecting,
  type ServerMessage,
  type Snapshot,
  decodeFriend,
  decodeServerMessage,
} from "./events.js";
export { EARTH_RADIUS_M, checkPosition, distanceM } from "./geo.js";
export { NearbySession, type SessionOptions, type SessionState } from "./session.js";
export { type LiveStream, type StreamMode, type StreamOpener } from "./streams.js";
export { NearbyView } from "./view.js";
export * as v1 from "./v1.js";
