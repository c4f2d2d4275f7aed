/**
 * The map: an SVG plot in Web Mercator around your own position (north up),
 * scaled so the nearby radius fills the view. Markers move with a CSS
 * transition, so moves animate. No tiles unless a tile URL is configured
 * (then they are drawn beneath, at the nearest whole zoom level).
 */
import type { NearbyFriend } from "@nearby/sdk/web";
import { formatDistance } from "./format.js";

const SVG = "http://www.w3.org/2000/svg";
const TILE = 256;
const RADIUS_PX = 270;

function el<K extends keyof SVGElementTagNameMap>(name: K, attrs: Record<string, string | number> = {}): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

/** World pixel coordinates at zoom 0 (256 px for the whole world). */
function world(lat: number, lng: number): [number, number] {
  const phi = (lat * Math.PI) / 180;
  const x = ((lng + 180) / 360) * TILE;
  const y = ((1 - Math.log(Math.tan(phi) + 1 / Math.cos(phi)) / Math.PI) / 2) * TILE;
  return [x, y];
}

export class MapView {
  private readonly tiles = el("g", { class: "tiles" });
  private readonly rings = el("g", { class: "rings" });
  private readonly markers = el("g", { class: "markers" });
  private readonly me = el("g", { class: "me", "data-testid": "me-marker" });
  private readonly byId = new Map<string, SVGGElement>();
  private center: [number, number] = [0, 0];
  private scale = 1; // screen px per world px (zoom 0)
  private radiusM = 8047;
  private viewM = 8047; // the view fits the farthest friend, within the radius

  constructor(
    private readonly svg: SVGSVGElement,
    private readonly tileUrl: string,
    onMove: (lat: number, lng: number) => void,
  ) {
    svg.append(this.tiles, this.rings, this.markers, this.me);
    this.me.append(el("circle", { r: 9, class: "dot" }), el("text", { y: 26, class: "label" }));
    let dragging = false;
    const toLatLng = (ev: PointerEvent): [number, number] => {
      const box = svg.getBoundingClientRect();
      const sx = ((ev.clientX - box.left) / box.width) * 600 - 300;
      const sy = ((ev.clientY - box.top) / box.height) * 600 - 300;
      return this.unproject(sx, sy);
    };
    svg.addEventListener("pointerdown", (ev) => {
      dragging = true;
      svg.setPointerCapture(ev.pointerId);
      this.placeMe(ev);
    });
    svg.addEventListener("pointermove", (ev) => dragging && this.placeMe(ev));
    svg.addEventListener("pointerup", (ev) => {
      if (!dragging) return;
      dragging = false;
      onMove(...toLatLng(ev));
    });
  }

  private placeMe(ev: PointerEvent): void {
    const box = this.svg.getBoundingClientRect();
    const sx = ((ev.clientX - box.left) / box.width) * 600 - 300;
    const sy = ((ev.clientY - box.top) / box.height) * 600 - 300;
    this.me.classList.add("dragging");
    this.me.style.transform = `translate(${sx}px, ${sy}px)`;
  }

  private project(lat: number, lng: number): [number, number] {
    const [x, y] = world(lat, lng);
    return [(x - this.center[0]) * this.scale, (y - this.center[1]) * this.scale];
  }

  private unproject(sx: number, sy: number): [number, number] {
    const x = this.center[0] + sx / this.scale;
    const y = this.center[1] + sy / this.scale;
    const lng = (x / TILE) * 360 - 180;
    const n = Math.PI - (2 * Math.PI * y) / TILE;
    const lat = (180 / Math.PI) * Math.atan(Math.sinh(n));
    return [Math.round(lat * 1e5) / 1e5, Math.round(lng * 1e5) / 1e5];
  }

  /** Centres the map on you; the view fits `farthestM` (within the radius). */
  setMe(lat: number, lng: number, name: string, radiusM: number, farthestM = 0): void {
    if (radiusM > 0) this.radiusM = radiusM;
    this.viewM = Math.min(this.radiusM, Math.max(500, farthestM * 1.35));
    this.center = world(lat, lng);
    // metres per world pixel at this latitude (zoom 0)
    const metersPerPx = (40_075_016.686 * Math.cos((lat * Math.PI) / 180)) / TILE;
    this.scale = (RADIUS_PX * metersPerPx) / this.viewM;
    this.me.classList.remove("dragging");
    this.me.style.transform = "translate(0px, 0px)";
    this.me.querySelector("text")!.textContent = `${name} (you)`;
    this.rings.replaceChildren(
      ...[1, 0.5].map((f) => el("circle", { r: RADIUS_PX * f, class: "ring" })),
      el("text", { x: 4, y: -RADIUS_PX - 6, class: "ring-label" }),
    );
    this.rings.lastElementChild!.textContent =
      this.viewM < this.radiusM ? formatDistance(this.viewM) : `${formatDistance(this.radiusM)} (nearby radius)`;
    this.drawTiles();
  }

  /** Puts every friend where they are now (new ones appear, gone ones vanish). */
  setFriends(friends: readonly NearbyFriend[]): void {
    const seen = new Set<string>();
    for (const f of friends) {
      seen.add(f.userId);
      let g = this.byId.get(f.userId);
      if (!g) {
        g = el("g", { class: "friend", "data-user-id": f.userId });
        g.append(el("circle", { r: 7, class: "dot" }), el("text", { y: -12, class: "label" }));
        this.markers.append(g);
        this.byId.set(f.userId, g);
      }
      const [x, y] = this.project(f.latitude, f.longitude);
      g.style.transform = `translate(${x.toFixed(1)}px, ${y.toFixed(1)}px)`;
      g.querySelector("text")!.textContent = `${f.displayName} · ${formatDistance(f.distanceMeters)}`;
    }
    for (const [id, g] of this.byId) {
      if (!seen.has(id)) {
        g.remove();
        this.byId.delete(id);
      }
    }
  }

  private drawTiles(): void {
    if (!this.tileUrl) return;
    const zoom = Math.log2(this.scale);
    const z = Math.max(0, Math.min(19, Math.floor(zoom)));
    const k = this.scale / 2 ** z; // screen px per tile px
    const size = TILE * k;
    const cx = (this.center[0] * 2 ** z) / TILE;
    const cy = (this.center[1] * 2 ** z) / TILE;
    const span = Math.ceil(300 / size) + 1;
    const images: SVGImageElement[] = [];
    for (let tx = Math.floor(cx) - span; tx <= Math.floor(cx) + span; tx++) {
      for (let ty = Math.floor(cy) - span; ty <= Math.floor(cy) + span; ty++) {
        if (ty < 0 || ty >= 2 ** z) continue;
        const wrapped = ((tx % 2 ** z) + 2 ** z) % 2 ** z;
        const href = this.tileUrl.replace("{z}", String(z)).replace("{x}", String(wrapped)).replace("{y}", String(ty));
        images.push(el("image", { href, x: (tx - cx) * size, y: (ty - cy) * size, width: size, height: size }));
      }
    }
    this.tiles.replaceChildren(...images);
  }
}
