/**
 * Errors the SDK raises. Every failed call surfaces as a NearbyError with the
 * gRPC status code, the server's message and, when the server attached a
 * `google.rpc.ErrorInfo` detail, its machine-readable reason and metadata.
 */
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { Code, ConnectError } from "@connectrpc/connect";

export { Code };

/** A call or a stream failed with a status the SDK does not retry. */
export class NearbyError extends Error {
  override name = "NearbyError";

  constructor(
    /** The gRPC status code. */
    readonly code: Code,
    /** The server's human-readable message (what to do about it). */
    readonly serverMessage: string,
    /** The ErrorInfo reason (UPPER_SNAKE), or "". */
    readonly reason = "",
    /** The ErrorInfo metadata (e.g. the offending `field`). */
    readonly metadata: Readonly<Record<string, string>> = {},
  ) {
    super(`${codeName(code)}${reason ? ` (${reason})` : ""}: ${serverMessage}`);
  }
}

/**
 * The token was missing, invalid or expired (UNAUTHENTICATED), or the caller
 * may not do this (PERMISSION_DENIED). Retrying will not help: get a new
 * token (sign in again) or use one with the needed rights.
 */
export class AuthError extends NearbyError {
  override name = "AuthError";
}

/** Statuses that end a session with an error instead of a retry. */
export const FATAL_CODES: ReadonlySet<Code> = new Set([
  Code.Unauthenticated,
  Code.PermissionDenied,
  Code.InvalidArgument,
  Code.FailedPrecondition,
  Code.NotFound,
  Code.AlreadyExists,
  Code.OutOfRange,
  Code.Unimplemented,
]);

/** The status name as gRPC spells it: "UNAUTHENTICATED", "FAILED_PRECONDITION". */
export function codeName(code: Code): string {
  return (Code[code] ?? "UNKNOWN").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

const ERROR_INFO = "google.rpc.ErrorInfo";

/** Decodes google.rpc.ErrorInfo {reason = 1, domain = 2, metadata = 3 (map)}. */
export function decodeErrorInfo(bytes: Uint8Array): {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
} {
  const reader = new BinaryReader(bytes);
  const info = { reason: "", domain: "", metadata: {} as Record<string, string> };
  while (reader.pos < reader.len) {
    const [field, wire] = reader.tag();
    if (field === 1 && wire === WireType.LengthDelimited) info.reason = reader.string();
    else if (field === 2 && wire === WireType.LengthDelimited) info.domain = reader.string();
    else if (field === 3 && wire === WireType.LengthDelimited) {
      const entry = new BinaryReader(reader.bytes());
      let key = "";
      let value = "";
      while (entry.pos < entry.len) {
        const [f, w] = entry.tag();
        if (f === 1 && w === WireType.LengthDelimited) key = entry.string();
        else if (f === 2 && w === WireType.LengthDelimited) value = entry.string();
        else entry.skip(w);
      }
      info.metadata[key] = value;
    } else reader.skip(wire);
  }
  return info;
}

/** A NearbyError, or an AuthError for UNAUTHENTICATED / PERMISSION_DENIED. */
export function makeError(
  code: Code,
  message: string,
  reason = "",
  metadata: Record<string, string> = {},
): NearbyError {
  const auth = code === Code.Unauthenticated || code === Code.PermissionDenied;
  return auth
    ? new AuthError(code, message, reason, metadata)
    : new NearbyError(code, message, reason, metadata);
}

/** The SDK error for anything a call threw (a ConnectError or not). */
export function fromError(error: unknown): NearbyError {
  if (error instanceof NearbyError) return error;
  const ce = ConnectError.from(error);
  let reason = "";
  let metadata: Record<string, string> = {};
  for (const detail of ce.details) {
    if ("type" in detail && detail.type === ERROR_INFO && detail.value instanceof Uint8Array) {
      try {
        ({ reason, metadata } = decodeErrorInfo(detail.value));
      } catch {
        // a malformed detail must not hide the real error
      }
      break;
    }
  }
  let message = ce.rawMessage;
  if (ce.code === Code.Unauthenticated && /^HTTP \d{3}$/.test(message)) {
    // Envoy's jwt_authn answers a Connect-protocol call with a bare 401
    // (grpc-web and gRPC carry its text, e.g. "Jwt is expired", in grpc-message)
    message = `the edge refused the token (${message}): it is missing, malformed, expired or not for this server`;
  }
  return makeError(ce.code, message, reason, metadata);
}
