/**
 * `@apiauth/client`: fresh provider tokens from an apiauth broker, for functions and builds
 * written in JavaScript or TypeScript. Zero dependencies; any runtime with `fetch` (Node 18+,
 * Cloudflare Workers, Deno, Bun).
 *
 *     const secrets = await getSecrets(event);     // APIAUTH_TOKEN, APIAUTH_URL
 *     if (secrets.spotify?.isLoggedIn) { ... secrets.spotify.bearerToken ... }
 *
 * The same contract as the Python client (`apiauth.client`): the same cache rules, the same
 * event override, the same errors and messages.
 */

import { badAnswer, brokerMessage, call, checkStatus, headers, json, refusal, unavailable } from "./broker.js";
import { cacheGet, cacheKey, cachePut, shared } from "./cache.js";
import { type ClientOptions, type Target, displayUrl, resolveTarget } from "./config.js";
import { InvalidRequest } from "./errors.js";
import { BadAnswer, type Secrets, parseDate, parseSecrets } from "./secrets.js";

export { DEFAULT_CACHE_TTL_MS, EXPIRY_MARGIN_MS, MAX_CACHE_ENTRIES, clearCache } from "./cache.js";
export { type ClientOptions, DEFAULT_TIMEOUT_MS, DEFAULT_URL } from "./config.js";
export {
  ApiAuthError,
  type ApiAuthErrorDetails,
  BrokerUnavailable,
  InvalidRequest,
  NotConfigured,
  Unauthorized,
} from "./errors.js";
export { type Account, type AuthMode, ProviderSecret, type Secrets } from "./secrets.js";
export { VERSION } from "./version.js";

export const SECRETS_PATH = "/api/v1/secrets";
export const FUNCTION_TOKENS_PATH = "/api/v1/function-tokens";
export const CONNECT_SESSIONS_PATH = "/api/v1/connect-sessions";
export const VISITORS_PATH = "/api/v1/visitors";
export const PROXY_PATH = "/api/v1/proxy";
export const VISITOR_HEADER = "Apiauth-Visitor";
/** Seconds a function token lives unless asked otherwise (the broker allows 1 to 86400). */
export const DEFAULT_FUNCTION_TOKEN_TTL = 900;

export interface GetSecretsOptions extends ClientOptions {
  /** A visitor's connections instead of the site owner's (site token, or a function token bound to that visitor). */
  visitorId?: string | undefined;
  /** Milliseconds since the epoch, for the cache; default `Date.now`. Tests inject a clock here. */
  now?: (() => number) | undefined;
}

/**
 * The providers connected for the token, with fresh bearer tokens.
 *
 * The token is `options.token`, else `event.apiauth_token` when the event has it (parity with
 * Netlify's `getSecrets(event)`), else `APIAUTH_TOKEN`. The broker is `options.url`, else
 * `APIAUTH_URL`, else `DEFAULT_URL`. Answers are cached in the process until the earliest
 * expiry minus a minute, at most 5 minutes; `clearCache()` forgets them.
 */
export async function getSecrets(event?: unknown, options: GetSecretsOptions = {}): Promise<Secrets> {
  const target = resolveTarget(event, options, options.visitorId);
  const now = options.now ?? Date.now;
  const key = await cacheKey(target.url, target.token, target.visitorId);
  const cached = cacheGet(key, now());
  if (cached !== undefined) return cached;
  return shared(key, async () => {
    const secrets = await fetchSecrets(target);
    cachePut(key, secrets, now());
    return secrets;
  });
}

async function fetchSecrets(target: Target): Promise<Secrets> {
  const query: Record<string, string> = target.visitorId === undefined ? {} : { visitor_id: target.visitorId };
  const response = await call(target, SECRETS_PATH, { query });
  checkStatus(target, response);
  const payload = await json(target, response);
  try {
    return parseSecrets(payload);
  } catch (error) {
    return badAnswer(target, error, response.status);
  }
}

/** A handler wrapped by `withSecrets` receives the secrets as its third argument, as Netlify's does. */
export type SecretsHandler<E, C, R> = (event: E, context: C, secrets: Secrets) => R | Promise<R>;

/**
 * Wrap a handler `(event, context, secrets)` into `(event, context)`: the secrets are fetched
 * (with `event` as `getSecrets`' event) before each call, from the cache when warm.
 */
export function withSecrets<E = unknown, C = unknown, R = unknown>(
  handler: SecretsHandler<E, C, R>,
  options: GetSecretsOptions = {},
): (event: E, context: C) => Promise<R> {
  return async (event: E, context: C) => handler(event, context, await getSecrets(event, options));
}

/** A short-lived token minted from a site token; put it in a build's or function's `APIAUTH_TOKEN`. */
export interface FunctionToken {
  readonly token: string;
  readonly expiresAt: Date;
}

export interface FunctionTokenOptions extends ClientOptions {
  /** Seconds it lives (1 to 86400; default 900). */
  ttlSeconds?: number | undefined;
  /** What it may read (default: everything the site token reads). */
  providers?: readonly string[] | string | undefined;
  /** Bind it to one visitor, whose connections are then all it reads. */
  visitorId?: string | undefined;
}

function list(value: readonly string[] | string): string[] {
  return typeof value === "string" ? [value] : [...value];
}

/**
 * Mint a short-lived function token from a site token, for one build or function. It stops
 * working after `ttlSeconds`, or sooner when the site token is rotated or revoked.
 */
export async function createFunctionToken(options: FunctionTokenOptions = {}): Promise<FunctionToken> {
  const target = resolveTarget(undefined, options);
  const body: Record<string, unknown> = { ttl_seconds: options.ttlSeconds ?? DEFAULT_FUNCTION_TOKEN_TTL };
  if (options.providers !== undefined) body["providers"] = list(options.providers);
  if (options.visitorId !== undefined) body["visitor_id"] = options.visitorId;
  const response = await call(target, FUNCTION_TOKENS_PATH, { method: "POST", body });
  if (response.status === 403) await refusal(target, response, "mint a function token");
  if (response.status === 422) {
    throw new InvalidRequest(
      `apiauth broker at ${displayUrl(target)} refused the function token request: ` +
        (await brokerMessage(target, response)),
      { url: displayUrl(target), statusCode: 422 },
    );
  }
  checkStatus(target, response, 201);
  const payload = await json(target, response);
  try {
    const { token, expires_at } = (payload ?? {}) as { token?: unknown; expires_at?: unknown };
    const expiresAt = parseDate(expires_at, "function token");
    if (typeof token !== "string" || !token || expiresAt === null) throw new BadAnswer("no token or expires_at");
    return Object.freeze({ token, expiresAt });
  } catch (error) {
    return badAnswer(target, error, response.status);
  }
}

export interface ProxyOptions extends ClientOptions {
  /** The token of that visitor's connection instead of the site owner's (`Apiauth-Visitor`). */
  visitorId?: string | undefined;
  /** Milliseconds for one proxied call (default 60 000). */
  timeoutMs?: number | undefined;
}

/** A `fetch` bound to one provider's API through the broker: paths are the provider's. */
export type ProxyFetch = (path: string | URL, init?: RequestInit) => Promise<Response>;

/**
 * A `fetch` whose requests go to `provider`'s API through the broker's proxy, which attaches
 * the connection's credential (and refreshes it on a 401):
 * `await proxy("github")("/user")`. A path is the provider's (`/user`, `repos/o/r`); an
 * absolute URL is accepted only when it is under this proxy, so the apiauth token is never
 * sent to another host.
 */
export function proxy(provider: string, options: ProxyOptions = {}): ProxyFetch {
  const target = resolveTarget(undefined, { timeoutMs: 60_000, ...options });
  let base: URL;
  try {
    base = new URL(`${target.url}${PROXY_PATH}/${encodeURIComponent(provider)}/`);
  } catch {
    throw unavailable(target, "APIAUTH_URL is not a URL");
  }
  return async (path, init = {}) => {
    const url = proxiedUrl(base, path);
    const requestHeaders = new Headers(init.headers);
    // The broker's credential always; the caller's Accept and User-Agent win over ours.
    for (const [name, value] of Object.entries(headers(target))) {
      if (name === "Authorization" || !requestHeaders.has(name)) requestHeaders.set(name, value);
    }
    if (options.visitorId !== undefined) requestHeaders.set(VISITOR_HEADER, options.visitorId);
    try {
      return await target.fetch(url, {
        ...init,
        headers: requestHeaders,
        redirect: "manual",
        signal: init.signal ?? AbortSignal.timeout(target.timeoutMs),
      });
    } catch (error) {
      if (init.signal?.aborted) throw error; // the caller's own abort
      throw unavailable(target, error instanceof Error && error.name === "TimeoutError"
        ? `no answer within ${target.timeoutMs / 1000} s`
        : "could not connect");
    }
  };
}

function proxiedUrl(base: URL, path: string | URL): URL {
  const text = path.toString();
  let url: URL;
  try {
    // "/user" is the provider's path (as httpx's base_url reads it), not the broker's root;
    // the URL parser decides whether anything else ("https://…", "//host/…") is absolute.
    const relative = text.startsWith("/") && !text.startsWith("//") ? text.replace(/^\/+/, "") : text;
    url = new URL(relative, base);
  } catch {
    throw new InvalidRequest(`${JSON.stringify(text)} is not a path or URL`);
  }
  if (url.origin !== base.origin || !url.pathname.startsWith(base.pathname)) {
    throw new InvalidRequest(
      `refusing to send the apiauth token to ${url.origin}${url.pathname}: a proxy request must be ` +
        `a path of the provider's API (e.g. "/user"), under ${base.href}`,
    );
  }
  return url;
}

/** A single-use link for one visitor to connect an account; hand `url` to the visitor. */
export interface ConnectLink {
  readonly url: string;
  readonly expiresAt: Date;
}

export interface ConnectSessionOptions extends ClientOptions {
  /** Scopes per provider (default: each provider's defaults). */
  scopes?: Readonly<Record<string, readonly string[]>> | undefined;
}

/**
 * With a site token: a single-use link (30 minutes) for one of the site's visitors to connect
 * one of `providers`. The visitor comes back to `returnUrl` with `apiauth_connected=<provider>`
 * or `apiauth_error=<message>` in its query.
 */
export async function createConnectSession(
  visitorId: string,
  providers: readonly string[] | string,
  returnUrl: string,
  options: ConnectSessionOptions = {},
): Promise<ConnectLink> {
  const target = resolveTarget(undefined, options);
  const body: Record<string, unknown> = { visitor_id: visitorId, providers: list(providers), return_url: returnUrl };
  if (options.scopes !== undefined) {
    body["scopes"] = Object.fromEntries(Object.entries(options.scopes).map(([name, wanted]) => [name, [...wanted]]));
  }
  const response = await call(target, CONNECT_SESSIONS_PATH, { method: "POST", body });
  await refusal(target, response, "create a connect session");
  checkStatus(target, response, 201);
  const payload = (await json(target, response)) as { url?: unknown; expires_at?: unknown } | null;
  let expiresAt: Date | null = null;
  try {
    expiresAt = parseDate(payload?.expires_at, "connect session");
  } catch {
    expiresAt = null;
  }
  if (typeof payload?.url !== "string" || expiresAt === null) {
    throw unavailable(target, "unexpected answer (no url or expires_at)", 201);
  }
  return Object.freeze({ url: payload.url, expiresAt });
}

/** What `deleteVisitor` erased. */
export interface VisitorDeletion {
  readonly visitorId: string;
  readonly deletedConnections: number;
  readonly revokedAtProvider: number;
}

/**
 * With a site token: revoke and erase every connection of one visitor (a data-protection
 * request). Deleting a visitor with no connections is not an error.
 */
export async function deleteVisitor(visitorId: string, options: ClientOptions = {}): Promise<VisitorDeletion> {
  const target = resolveTarget(undefined, options);
  const response = await call(target, `${VISITORS_PATH}/${encodeURIComponent(visitorId)}`, { method: "DELETE" });
  await refusal(target, response, "delete a visitor");
  checkStatus(target, response);
  const payload = (await json(target, response)) as { deleted_connections?: unknown; revoked_at_provider?: unknown } | null;
  const deleted = payload?.deleted_connections;
  const revoked = payload?.revoked_at_provider;
  if (!Number.isInteger(deleted) || !Number.isInteger(revoked)) {
    throw unavailable(target, "unexpected answer", response.status);
  }
  return Object.freeze({ visitorId, deletedConnections: deleted as number, revokedAtProvider: revoked as number });
}

