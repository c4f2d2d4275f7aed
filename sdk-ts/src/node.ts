/**
 * Node: the gRPC protocol over HTTP/2 (the bidirectional Connect stream works
 * end to end through Envoy), with HTTP/2 keepalive pings like the Python SDK.
 */
import { createGrpcTransport } from "@connectrpc/connect-node";
import { type ClientOptions, NearbyClient, type TokenSource, authInterceptor } from "./client.js";

export * from "./index.js";

export interface NodeClientOptions extends Partial<ClientOptions> {
  /** The user's bearer token or a function returning the current one. */
  readonly token?: TokenSource;
}

/**
 * A client for Node. `baseUrl` is the edge, e.g. "http://localhost:8080"
 * (plaintext HTTP/2) or "https://nearby.example.com". Sessions use the
 * bidirectional Connect stream unless `mode: "watch"`.
 */
export function createNodeClient(baseUrl: string, options: NodeClientOptions = {}): NearbyClient {
  const transport = createGrpcTransport({
    baseUrl,
    interceptors: [authInterceptor(options.token)],
    // a PING every 30 s finds a dead peer (and keeps NATs open), as Envoy expects
    pingIntervalMs: 30_000,
    pingTimeoutMs: 10_000,
    pingIdleConnection: true,
  });
  return new NearbyClient(transport, { ...options, mode: options.mode ?? "bidi" });
}
