/**
 * The live map page: dev login, the live list over NearbyService.Watch (the
 * browser path of the TypeScript SDK), moves as ReportLocation calls, ghost
 * mode through PresenceService.
 *
 * Configuration: /config.json from the server of the page (`nearby run --dev`
 * writes it: the edge's port and an optional tile URL), overridden by query
 * parameters: ?api=http://host:8080, ?protocol=grpc-web, ?lat=..&lng=..,
 * ?tiles=https://.../{z}/{x}/{y}.png. A token can be given instead of the
 * dev login as #token=JWT (the page then skips the sign-in form).
 */
import {
  AuthError,
  type Event,
  type NearbyClient,
  type NearbySession,
  NearbyError,
  createWebClient,
} from "@nearby/sdk/web";
import { LEFT_REASONS, formatAgo, formatDistance } from "./format.js";
import { MapView } from "./map.js";
import "./style.css";

interface Config {
  api: string;
  protocol: "connect" | "grpc-web";
  tileUrl: string;
  lat: number;
  lng: number;
}

const REPORT_GAP_MS = 1100; // the server shares reports at most once a second
const KEEPALIVE_MS = 30_000; // silent for 10 min = offline: report now and then
const REQUESTS_MS = 3000; // how often incoming friend requests are looked up

const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;

async function loadConfig(): Promise<Config> {
  const q = new URLSearchParams(location.search);
  let served: { envoy_port?: number; api?: string; tile_url?: string } = {};
  try {
    const response = await fetch("/config.json", { cache: "no-store" });
    if (response.ok) served = await response.json();
  } catch {
    // no config: defaults
  }
  const port = served.envoy_port ?? 8080;
  return {
    api: q.get("api") ?? served.api ?? `${location.protocol}//${location.hostname}:${port}`,
    protocol: q.get("protocol") === "grpc-web" ? "grpc-web" : "connect",
    tileUrl: q.get("tiles") ?? served.tile_url ?? "",
    lat: Number(q.get("lat") ?? 52.52),
    lng: Number(q.get("lng") ?? 13.405),
  };
}

/** POST /dev/token on the edge: {"user_id"} -> {"token"}. */
async function devLogin(api: string, userId: string, displayName: string): Promise<string> {
  let response: Response;
  try {
    response = await fetch(`${api}/dev/token`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(displayName ? { user_id: userId, display_name: displayName } : { user_id: userId }),
    });
  } catch (error) {
    throw new Error(`could not reach the dev login at ${api}/dev/token (${String(error)}); is \`make run\` running?`);
  }
  const body = (await response.json().catch(() => ({}))) as { token?: string; error?: string };
  if (response.status === 404) {
    throw new Error("this stack has no dev login (it runs without dev mode): paste a token as #token=… instead");
  }
  if (!response.ok || !body.token) throw new Error(body.error ?? `dev login failed: HTTP ${response.status}`);
  return body.token;
}

/** The `sub` of a JWT, for display only (the edge checks the signature). */
function subject(token: string): string {
  try {
    const payload = JSON.parse(atob(token.split(".")[1]!.replace(/-/g, "+").replace(/_/g, "/"))) as { sub?: string };
    return payload.sub ?? "";
  } catch {
    return "";
  }
}

class App {
  private client: NearbyClient | undefined;
  private session: NearbySession | undefined;
  private token = "";
  private name = "";
  private position: [number, number];
  private lastReport = 0;
  private reportTimer: number | undefined;
  private keepalive: number | undefined;
  private requestsTimer: number | undefined;
  private readonly names = new Map<string, string>();
  private readonly map: MapView;

  constructor(private readonly config: Config) {
    this.position = [config.lat, config.lng];
    this.map = new MapView($<HTMLElement>("map") as unknown as SVGSVGElement, config.tileUrl, (lat, lng) =>
      this.moveTo(lat, lng),
    );
    $("signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      void this.signIn();
    });
    $("position-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.moveTo(Number($<HTMLInputElement>("lat").value), Number($<HTMLInputElement>("lng").value));
    });
    $<HTMLInputElement>("ghost").addEventListener("change", () => void this.setGhost());
    $("request-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      void this.sendRequest();
    });
    $("signout").addEventListener("click", () => this.signOut(""));
    setInterval(() => this.renderFriends(), 1000);
  }

  start(): void {
    const hash = new URLSearchParams(location.hash.slice(1));
    const saved = sessionStorage.getItem("nearby.token");
    if (hash.has("token")) {
      history.replaceState(null, "", location.pathname + location.search);
      void this.open(hash.get("token") ?? "", "");
    } else if (saved) {
      void this.open(saved, sessionStorage.getItem("nearby.name") ?? "");
    }
  }

  private status(state: string, text: string): void {
    const node = $("status");
    node.dataset["state"] = state;
    node.textContent = text;
  }

  private async signIn(): Promise<void> {
    const userId = $<HTMLInputElement>("user-id").value.trim();
    const displayName = $<HTMLInputElement>("display-name").value.trim();
    this.showSignInError("");
    $<HTMLButtonElement>("signin-button").disabled = true;
    try {
      const token = await devLogin(this.config.api, userId, displayName);
      await this.open(token, displayName || userId);
    } catch (error) {
      this.showSignInError(error instanceof Error ? error.message : String(error));
    } finally {
      $<HTMLButtonElement>("signin-button").disabled = false;
    }
  }

  private showSignInError(text: string): void {
    const node = $("signin-error");
    node.textContent = text;
    node.hidden = !text;
  }

  /** Signs in with this token and opens the live session. */
  private async open(token: string, name: string): Promise<void> {
    this.token = token;
    this.name = name || subject(token) || "you";
    sessionStorage.setItem("nearby.token", token);
    sessionStorage.setItem("nearby.name", this.name);
    this.client = createWebClient(this.config.api, { token: () => this.token, protocol: this.config.protocol });
    $("signin").hidden = true;
    $("app").hidden = false;
    $("me-name").textContent = this.name;
    this.showPosition();
    this.status("connecting", "connecting…");
    const session = this.client.connect(...this.position);
    this.session = session;
    this.lastReport = Date.now(); // the session reports the position first
    this.keepalive = window.setInterval(() => void this.report(), KEEPALIVE_MS);
    this.requestsTimer = window.setInterval(() => void this.showRequests(), REQUESTS_MS);
    void this.showRequests();
    this.client
      .getVisibility()
      .then((visible) => ($<HTMLInputElement>("ghost").checked = !visible))
      .catch(() => undefined); // an auth problem surfaces through the session
    try {
      for await (const event of session) this.onEvent(event);
    } catch (error) {
      if (this.session !== session) return;
      if (error instanceof AuthError) {
        this.signOut(
          `Sign-in needed: the server refused your token (${error.message}). Sign in again to get a new one.`,
        );
      } else {
        this.status("error", error instanceof NearbyError ? error.message : String(error));
      }
    }
  }

  private signOut(reason: string): void {
    this.session?.close();
    this.client?.close();
    this.session = undefined;
    this.client = undefined;
    window.clearInterval(this.keepalive);
    window.clearInterval(this.requestsTimer);
    $("requests").replaceChildren();
    window.clearTimeout(this.reportTimer);
    this.reportTimer = undefined;
    sessionStorage.removeItem("nearby.token");
    this.map.setFriends([]);
    $("left").replaceChildren();
    $("app").hidden = true;
    $("signin").hidden = false;
    this.showSignInError(reason);
    this.status(reason ? "auth-error" : "signed-out", reason ? "not signed in: token refused" : "signed out");
  }

  private onEvent(event: Event): void {
    const session = this.session!;
    switch (event.kind) {
      case "reconnecting":
        this.status("reconnecting", `reconnecting in ${(event.delayMs / 1000).toFixed(1)} s (${event.cause})`);
        break;
      case "friendLeft":
        this.addLeft(event.userId, LEFT_REASONS[event.reason], event.reason, event.receivedAt);
        break;
      default:
        break;
    }
    for (const f of session.nearby) this.names.set(f.userId, f.displayName);
    this.renderFriends();
  }

  private addLeft(userId: string, text: string, reason: string, at: Date): void {
    const li = document.createElement("li");
    li.dataset["userId"] = userId;
    li.dataset["reason"] = reason;
    const who = document.createElement("b");
    who.textContent = this.names.get(userId) ?? userId;
    li.append(who, ` ${text} `, Object.assign(document.createElement("time"), { textContent: at.toLocaleTimeString() }));
    $("left").prepend(li);
    while ($("left").children.length > 20) $("left").lastElementChild!.remove();
  }

  private renderFriends(): void {
    const session = this.session;
    if (!session) return;
    const now = new Date();
    const friends = session.nearby;
    const rows = friends.map((f) => {
      const tr = document.createElement("tr");
      tr.dataset["userId"] = f.userId;
      tr.dataset["distanceMeters"] = f.distanceMeters.toFixed(1);
      const cells = [f.displayName, formatDistance(f.distanceMeters), formatAgo(f.updatedAt, now)];
      for (const [i, text] of cells.entries()) {
        const td = document.createElement("td");
        td.className = ["name", "distance", "updated"][i]!;
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    });
    $("friends").querySelector("tbody")!.replaceChildren(...rows);
    $("empty").hidden = friends.length > 0;
    $("count").textContent = session.totalSize ? `(${session.totalSize})` : "";
    const farthest = Math.max(0, ...friends.map((f) => f.distanceMeters));
    this.map.setMe(...this.position, this.name, session.radiusMeters, farthest);
    if (session.state === "connected") {
      this.status("connected", `connected · ${session.totalSize} nearby within ${formatDistance(session.radiusMeters)}`);
    }
    this.map.setFriends(friends);
  }

  private showPosition(): void {
    $<HTMLInputElement>("lat").value = this.position[0].toFixed(5);
    $<HTMLInputElement>("lng").value = this.position[1].toFixed(5);
  }

  /** Moves you: the map and distances at once, the report to the server at most once per REPORT_GAP_MS. */
  private moveTo(lat: number, lng: number): void {
    if (!(Number.isFinite(lat) && Math.abs(lat) <= 90 && Number.isFinite(lng) && Math.abs(lng) <= 180)) {
      this.status("error", "latitude must be within ±90 and longitude within ±180");
      return;
    }
    this.position = [lat, lng];
    this.showPosition();
    this.renderFriends();
    if (this.reportTimer !== undefined) return; // the pending report sends the newest position
    const wait = Math.max(0, this.lastReport + REPORT_GAP_MS - Date.now());
    this.reportTimer = window.setTimeout(() => {
      this.reportTimer = undefined;
      void this.report();
    }, wait);
  }

  private async report(): Promise<void> {
    const session = this.session;
    if (!session) return;
    this.lastReport = Date.now();
    try {
      await session.updateLocation(...this.position);
      this.renderFriends();
    } catch (error) {
      if (error instanceof AuthError) this.signOut(`Sign-in needed: ${error.message}`);
      else this.status("error", `could not report your location: ${String(error)}`);
    }
  }

  private async sendRequest(): Promise<void> {
    const input = $<HTMLInputElement>("request-user");
    const to = input.value.trim();
    try {
      await this.client!.sendFriendRequest(to);
      $("request-status").textContent = `Friend request sent to ${to}.`;
      input.value = "";
    } catch (error) {
      $("request-status").textContent = error instanceof NearbyError ? error.serverMessage : String(error);
    }
  }

  /** Incoming friend requests, each with an Accept button. */
  private async showRequests(): Promise<void> {
    const client = this.client;
    if (!client) return;
    let requests;
    try {
      requests = await client.listFriendRequests("incoming");
    } catch {
      return; // shown by the session if it is the token
    }
    const items = requests.map((r) => {
      const li = document.createElement("li");
      li.dataset["userId"] = r.fromUser.userId;
      const accept = Object.assign(document.createElement("button"), { type: "button", textContent: "Accept" });
      accept.addEventListener("click", () => {
        accept.disabled = true;
        client
          .acceptFriendRequest(r.fromUser.userId)
          .then(() => ($("request-status").textContent = `You and ${r.fromUser.displayName} are friends.`))
          .catch((error: unknown) => ($("request-status").textContent = String(error)))
          .finally(() => void this.showRequests());
      });
      li.append(`${r.fromUser.displayName || r.fromUser.userId} wants to be friends `, accept);
      return li;
    });
    if (this.client === client) $("requests").replaceChildren(...items);
  }

  private async setGhost(): Promise<void> {
    const box = $<HTMLInputElement>("ghost");
    try {
      const visible = await this.client!.setVisibility(!box.checked);
      box.checked = !visible;
      $("me").classList.toggle("ghost", !visible);
    } catch (error) {
      box.checked = !box.checked;
      this.status("error", `ghost mode: ${String(error)}`);
    }
  }
}

void loadConfig().then((config) => new App(config).start());
