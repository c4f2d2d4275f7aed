import type { LeftReason } from "@nearby/sdk/web";

/** 310 m, 2.40 km, like `nearby watch`. */
export function formatDistance(meters: number): string {
  return meters < 1000 ? `${Math.round(meters)} m` : `${(meters / 1000).toFixed(2)} km`;
}

/** "updated 4 s ago", "updated 3 min ago". */
export function formatAgo(then: Date, now: Date): string {
  const s = Math.max(0, Math.round((now.getTime() - then.getTime()) / 1000));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

export const LEFT_REASONS: Record<LeftReason, string> = {
  OUT_OF_RANGE: "moved out of range",
  OFFLINE: "went offline (no location for a while)",
  UNFRIENDED: "is no longer your friend",
  HIDDEN: "turned on ghost mode",
  UNSPECIFIED: "left",
};
