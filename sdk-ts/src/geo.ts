/** Mean Earth radius (IUGG), in metres, as the server uses. */
export const EARTH_RADIUS_M = 6_371_008.8;

const rad = (deg: number): number => (deg * Math.PI) / 180;

/** Great-circle (haversine) distance between two points, in metres. */
export function distanceM(lat1: number, lng1: number, lat2: number, lng2: number): number {
  const p1 = rad(lat1);
  const p2 = rad(lat2);
  const dp = p2 - p1;
  const dl = rad(lng2 - lng1);
  const a = Math.sin(dp / 2) ** 2 + Math.cos(p1) * Math.cos(p2) * Math.sin(dl / 2) ** 2;
  return 2 * EARTH_RADIUS_M * Math.asin(Math.min(1, Math.sqrt(a)));
}

/** Throws RangeError unless the coordinates are finite and in range. */
export function checkPosition(latitude: number, longitude: number): void {
  if (!(Number.isFinite(latitude) && latitude >= -90 && latitude <= 90)) {
    throw new RangeError(`latitude must be within [-90, 90], got ${latitude}`);
  }
  if (!(Number.isFinite(longitude) && longitude >= -180 && longitude <= 180)) {
    throw new RangeError(`longitude must be within [-180, 180], got ${longitude}`);
  }
}
