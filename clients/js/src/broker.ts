/** HTTP to the broker: one place that turns transport failures and statuses into typed errors. */

import { type Target, displayUrl, tokenKind } from "./config.js";
import { BrokerUnavailable, InvalidRequest, Unauthorized } from "./errors.js";
import { BadAnswer } from "./secrets.js";
import { VERSION } from "./version.js";

export function headers(target: Target): Record<string, string> {
  return {
    Authorization: `Bearer ${target.token}`,
    Accept: "application/json",
    // Browsers refuse to set User-Agent; servers and Workers send it.
    "User-Agent": `apiauth-js/${VERSION}`,
  };
}

export function unavailable(target: Target, problem: string, status?: number): BrokerUnavailable {
  return new BrokerUnavailable(
    `apiauth broker at ${displayUrl(target)} is unavailable: ${problem}. ` +
      "Check that APIAUTH_URL points at the broker and that `apiauth serve` is running.",
    { url: displayUrl(target), statusCode: status },
  );
}

function isTimeout(error: unknown): boolean {
  return error instanceof Error && (error.name === "TimeoutError" || error.name === "AbortError");
}

/** `fetch` with the timeout, never following a redirect (which would carry the token elsewhere). */
export async function call(
  target: Target,
  path: string,
  init: { method?: string; body?: unknown; query?: Record<string, string> } = {},
): Promise<Response> {
  let url: URL;
  try {
    url = new URL(target.url + path);
  } catch {
    throw unavailable(target, "APIAUTH_URL is not a URL");
  }
  for (const [name, value] of Object.entries(init.query ?? {})) url.searchParams.set(name, value);
  const requestHeaders = headers(target);
  let body: string | null = null;
  if (init.body !== undefined) {
    body = JSON.stringify(init.body);
    requestHeaders["Content-Type"] = "application/json";
  }
  try {
    return await target.fetch(url, {
      method: init.method ?? "GET",
      headers: requestHeaders,
      body,
      redirect: "manual",
      signal: AbortSignal.timeout(target.timeoutMs),
    });
  } catch (error) {
    const problem = isTimeout(error) ? `no answer within ${target.timeoutMs / 1000} s` : "could not connect";
    throw unavailable(target, problem);
  }
}

export function checkStatus(target: Target, response: Response, expected = 200): void {
  const status = response.status;
  if (status === 401 || status === 403) {
    throw new Unauthorized(
      `apiauth broker at ${displayUrl(target)} rejected the ${tokenKind(target)} ` +
        `(HTTP ${status}): it was revoked, rotated or has expired. Get a fresh one ` +
        "(e.g. `apiauth sites enable SITE`) and update APIAUTH_TOKEN.",
      { url: displayUrl(target), statusCode: status },
    );
  }
  // A browser's fetch hides a manual redirect as an "opaqueredirect" answer with status 0.
  if (response.type === "opaqueredirect" || (status >= 300 && status < 400)) {
    const location = response.headers.get("location");
    throw unavailable(
      target,
      `HTTP ${status} redirect${location ? ` to ${location}` : ""}; set APIAUTH_URL to the final address`,
      status,
    );
  }
  if (status !== expected) throw unavailable(target, `unexpected HTTP status ${status}`, status);
}

export async function json(target: Target, response: Response): Promise<unknown> {
  try {
    return JSON.parse(await response.text()) as unknown;
  } catch {
    throw unavailable(target, "the answer is not JSON", response.status);
  }
}

export function badAnswer(target: Target, error: unknown, status: number): never {
  if (error instanceof BadAnswer) throw unavailable(target, `unexpected answer (${error.message})`, status);
  throw error;
}

/** The broker's own explanation of a refusal, never echoing the token. */
export async function brokerMessage(target: Target, response: Response): Promise<string> {
  try {
    const payload = JSON.parse(await response.text()) as { error?: { message?: unknown } };
    const message = payload.error?.message;
    if (typeof message === "string") return message.split(target.token).join("…").slice(0, 500);
  } catch {
    // fall through
  }
  return `HTTP ${response.status}`;
}

/** Typed errors for a refused management call of a site token. */
export async function refusal(
  target: Target,
  response: Response,
  what: string,
  invalid: readonly number[] = [404, 409, 422],
): Promise<void> {
  const status = response.status;
  if (status === 403) {
    throw new Unauthorized(
      `apiauth broker at ${displayUrl(target)} refused to ${what} with the ${tokenKind(target)}: ` +
        (await brokerMessage(target, response)),
      { url: displayUrl(target), statusCode: status },
    );
  }
  if (invalid.includes(status)) {
    throw new InvalidRequest(
      `apiauth broker at ${displayUrl(target)} refused to ${what}: ${await brokerMessage(target, response)}`,
      { url: displayUrl(target), statusCode: status },
    );
  }
}
