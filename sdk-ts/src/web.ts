/**
 * Browsers: fetch() cannot send on a stream, so sessions use the server stream
 * NearbyService.Watch plus unary ReportLocation calls, over the Connect
 * protocol (Envoy's connect_grpc_bridge) or grpc-web (Envoy's grpc_web).
 * Works in Node 20+ too (global fetch), which is how the browser path is
 * tested without a browser.
 */
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { type ClientOptions, NearbyClient, type TokenSource, authInterceptor } from "./client.js";

export * from "./index.js";

export interface WebClientOptions extends Partial<Omit<ClientOptions, "mode">> {
  /** The user's bearer token or a function returning the current one. */
  readonly token?: TokenSource;
  /** "connect" (default) or "grpc-web". Both are binary protobuf on the wire. */
  readonly protocol?: "connect" | "grpc-web";
}

/** A client for browsers; `baseUrl` is the edge, e.g. location.origin or "http://localhost:8080". */
export function createWebClient(baseUrl: string, options: WebClientOptions = {}): NearbyClient {
  const config = {
    baseUrl,
    interceptors: [authInterceptor(options.token)],
    // Envoy's Connect bridge turns requests into gRPC (protobuf) for the
    // backends, which speak no JSON: send binary.
    useBinaryFormat: true,
  };
  const transport =
    options.protocol === "grpc-web" ? createGrpcWebTransport(config) : createConnectTransport(config);
  return new NearbyClient(transport, { ...options, mode: "watch" });
}
