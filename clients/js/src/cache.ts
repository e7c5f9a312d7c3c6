/**
 * The in-process cache of `getSecrets` answers, per (broker URL, token, visitor), with the
 * Python client's rules: an entry lives until the earliest `expiresAt` among the providers
 * minus `EXPIRY_MARGIN_MS`, and never longer than `DEFAULT_CACHE_TTL_MS`. The broker refreshes
 * tokens itself; the cap bounds how long a disconnect in the dashboard takes to reach a warm
 * function instance.
 */

import type { Secrets } from "./secrets.js";

/** Milliseconds before a provider's `expiresAt` at which a cached answer is stale. */
export const EXPIRY_MARGIN_MS = 60_000;
/** Milliseconds an answer is cached when no provider expires sooner (5 minutes). */
export const DEFAULT_CACHE_TTL_MS = 300_000;
/** Distinct (url, token) pairs kept; the ones expiring first are dropped beyond this. */
export const MAX_CACHE_ENTRIES = 256;

const entries = new Map<string, { deadline: number; secrets: Secrets }>();
const inFlight = new Map<string, Promise<Secrets>>();

export function cacheGet(key: string, now: number): Secrets | undefined {
  const entry = entries.get(key);
  if (entry === undefined) return undefined;
  if (entry.deadline <= now) {
    entries.delete(key);
    return undefined;
  }
  return entry.secrets;
}

export function cachePut(key: string, secrets: Secrets, now: number): void {
  let deadline = now + DEFAULT_CACHE_TTL_MS;
  for (const provider of Object.values(secrets)) {
    if (provider?.expiresAt) deadline = Math.min(deadline, provider.expiresAt.getTime() - EXPIRY_MARGIN_MS);
  }
  if (deadline <= now) {
    entries.delete(key); // a token expires within the margin: ask again next time
    return;
  }
  entries.set(key, { deadline, secrets });
  if (entries.size > MAX_CACHE_ENTRIES) {
    const byDeadline = [...entries].sort((a, b) => a[1].deadline - b[1].deadline);
    for (const [stale] of byDeadline.slice(0, Math.floor(entries.size / 4))) entries.delete(stale);
  }
}

/** One fetch per key at a time: concurrent cold calls of a function instance share it. */
export function shared(key: string, fetchOnce: () => Promise<Secrets>): Promise<Secrets> {
  const pending = inFlight.get(key);
  if (pending !== undefined) return pending;
  const started = fetchOnce().finally(() => inFlight.delete(key));
  inFlight.set(key, started);
  return started;
}

/** Forget every cached answer, so the next call asks the broker. */
export function clearCache(): void {
  entries.clear();
}

/** The cache keeps only a digest of the token where the runtime can make one. */
export async function cacheKey(url: string, token: string, visitorId: string | undefined): Promise<string> {
  const subtle = (globalThis as { crypto?: { subtle?: SubtleCrypto } }).crypto?.subtle;
  let digest = token;
  if (subtle !== undefined) {
    const bytes = new Uint8Array(await subtle.digest("SHA-256", new TextEncoder().encode(token)));
    digest = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  return JSON.stringify([url, digest, visitorId ?? null]);
}
