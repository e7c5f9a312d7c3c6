/** Where the token and the broker come from: options, the event, then the environment. */

import { NotConfigured } from "./errors.js";

export const DEFAULT_URL = "http://127.0.0.1:8000";
export const TOKEN_PREFIXES = ["apiauth_site_", "apiauth_fn_"] as const;

/** Settings every call accepts. Runtimes without `process.env` (Workers, Deno Deploy) pass `env` or `token`/`url`. */
export interface ClientOptions {
  /** A site or function token; default `event.apiauth_token`, then `APIAUTH_TOKEN`. */
  token?: string | undefined;
  /** The broker's base URL; default `APIAUTH_URL`, then `http://127.0.0.1:8000`. */
  url?: string | undefined;
  /** Where `APIAUTH_TOKEN` and `APIAUTH_URL` are read; default `process.env` where there is one. */
  env?: Readonly<Record<string, string | undefined>> | undefined;
  /** The fetch to call the broker with; default the global `fetch`. */
  fetch?: typeof fetch | undefined;
  /** Milliseconds for one whole call to the broker (default 10 000). */
  timeoutMs?: number | undefined;
}

export interface Target {
  readonly url: string;
  readonly token: string;
  readonly visitorId: string | undefined;
  readonly fetch: typeof fetch;
  readonly timeoutMs: number;
}

export const DEFAULT_TIMEOUT_MS = 10_000;

function processEnv(): Readonly<Record<string, string | undefined>> {
  // Read through globalThis so that the package needs neither @types/node nor Node itself.
  const proc = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  return proc?.env ?? {};
}

export function resolveTarget(
  event: unknown,
  options: ClientOptions = {},
  visitorId?: string,
): Target {
  const env = options.env ?? processEnv();
  let token = options.token;
  if (token === undefined && typeof event === "object" && event !== null) {
    const fromEvent = (event as { apiauth_token?: unknown }).apiauth_token;
    if (typeof fromEvent === "string" && fromEvent.trim()) token = fromEvent;
  }
  token = (token ?? env["APIAUTH_TOKEN"] ?? "").trim();
  if (!token) {
    throw new NotConfigured(
      "APIAUTH_TOKEN is not set. Set it to a site or function token " +
        "(`apiauth sites enable SITE` prints one), pass { token }, " +
        "or start the command with `apiauth run -- CMD`, which sets it for you.",
    );
  }
  const url = (options.url ?? env["APIAUTH_URL"] ?? DEFAULT_URL).trim().replace(/\/+$/, "");
  const fetchImpl = options.fetch ?? globalThis.fetch;
  if (typeof fetchImpl !== "function") {
    throw new NotConfigured("this runtime has no global fetch: pass { fetch } (Node 18 or newer has one)");
  }
  return {
    url,
    token,
    visitorId,
    fetch: fetchImpl,
    timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
  };
}

/** The broker URL without any user:password part, for messages. */
export function displayUrl(target: Target): string {
  try {
    const parsed = new URL(target.url);
    if (!parsed.username && !parsed.password) return target.url;
    parsed.username = "";
    parsed.password = "";
    return parsed.toString().replace(/\/$/, "");
  } catch {
    return target.url;
  }
}

export function tokenKind(target: Target): string {
  for (const prefix of TOKEN_PREFIXES) {
    if (target.token.startsWith(prefix)) return `token ${prefix}…`;
  }
  return "token";
}
