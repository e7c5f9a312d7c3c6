/** The shape of `GET /api/v1/secrets` in JavaScript's casing, and its parsing. */

/** How a provider's credential is used; `GET /api/v1/providers` lists it for every entry. */
export type AuthMode =
  | "oauth2"
  | "api_key"
  | "basic"
  | "oauth2_client_credentials"
  | "jwt_bearer"
  | "github_app"
  // A broker newer than this package may add modes.
  | (string & {});

/** The provider account the token acts as. */
export interface Account {
  readonly id: string | null;
  readonly login: string | null;
}

const INSPECT = Symbol.for("nodejs.util.inspect.custom");

function mask(secret: string | null): string | null {
  // At most 4 leading characters, and fewer for short strings (as the Python client).
  return secret === null ? null : `${secret.slice(0, Math.min(4, Math.floor(secret.length / 4)))}…`;
}

/** One connected provider. Check `isLoggedIn` before using the token. */
export class ProviderSecret {
  readonly provider: string;
  /** The bearer token (OAuth access token, minted token); null for key-based modes. */
  readonly bearerToken: string | null;
  readonly tokenType: string;
  readonly grantedScopes: readonly string[];
  /** False when the connection needs re-authorization in the dashboard. */
  readonly isLoggedIn: boolean;
  /** When `bearerToken` expires, or null when it does not. */
  readonly expiresAt: Date | null;
  readonly account: Account | null;
  /** Provider-specific fields (Salesforce `instance_url`, Stripe `stripe_user_id`), as the broker names them. */
  readonly extra: Readonly<Record<string, unknown>>;
  readonly authMode: AuthMode;
  /** The API key of an `api_key` connection. */
  readonly apiKey: string | null;
  /** The user name of a `basic` connection. */
  readonly username: string | null;
  /** The password of a `basic` connection. */
  readonly password: string | null;

  constructor(fields: Omit<ProviderSecret, "toString" | typeof INSPECT>) {
    this.provider = fields.provider;
    this.bearerToken = fields.bearerToken;
    this.tokenType = fields.tokenType;
    this.grantedScopes = Object.freeze([...fields.grantedScopes]);
    this.isLoggedIn = fields.isLoggedIn;
    this.expiresAt = fields.expiresAt;
    this.account = fields.account === null ? null : Object.freeze({ ...fields.account });
    this.extra = Object.freeze({ ...fields.extra });
    this.authMode = fields.authMode;
    this.apiKey = fields.apiKey;
    this.username = fields.username;
    this.password = fields.password;
    Object.freeze(this);
  }

  /** What `console.log` shows: never a token, key or password, nor `extra`'s values. */
  [INSPECT](): string {
    return (
      `ProviderSecret { provider: '${this.provider}', authMode: '${this.authMode}', ` +
      `bearerToken: ${JSON.stringify(mask(this.bearerToken))}, ` +
      `apiKey: ${JSON.stringify(mask(this.apiKey))}, ` +
      `password: ${this.password === null ? "null" : "'…'"}, ` +
      `isLoggedIn: ${this.isLoggedIn}, grantedScopes: ${JSON.stringify(this.grantedScopes)}, ` +
      `expiresAt: ${this.expiresAt === null ? "null" : this.expiresAt.toISOString()}, ` +
      `account: ${JSON.stringify(this.account)}, extraKeys: ${JSON.stringify(Object.keys(this.extra).sort())} }`
    );
  }

  toString(): string {
    return `[ProviderSecret ${this.provider}]`;
  }
}

/**
 * The providers connected for a token, by name: `secrets.spotify` is the `ProviderSecret`, or
 * `undefined` when spotify is not connected (as in Netlify's `getSecrets`). Read-only.
 */
export type Secrets = { readonly [provider: string]: ProviderSecret | undefined };

/** The JSON does not have the documented shape. */
export class BadAnswer extends Error {}

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function optString(value: unknown, what: string): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value === "string") return value;
  if (typeof value === "number" && Number.isInteger(value)) return String(value); // numeric account ids
  throw new BadAnswer(`${what} is not a string`);
}

export function parseDate(value: unknown, what: string): Date | null {
  if (value === null || value === undefined) return null;
  if (typeof value !== "string") throw new BadAnswer(`${what}.expires_at is not a string`);
  // The broker writes ISO 8601 with an offset; one without is UTC, as in the Python client.
  const hasZone = /(Z|[+-]\d{2}:?\d{2})$/i.test(value);
  const parsed = new Date(hasZone || !value.includes("T") ? value : `${value}Z`);
  if (Number.isNaN(parsed.getTime())) throw new BadAnswer(`${what}.expires_at is not an ISO-8601 date-time`);
  return parsed;
}

function parseProvider(name: string, data: Json): ProviderSecret {
  const what = `provider '${name}'`;
  let scopes: unknown = data["granted_scopes"] ?? [];
  if (typeof scopes === "string") scopes = scopes.split(/\s+/).filter(Boolean);
  if (!Array.isArray(scopes) || !scopes.every((s) => typeof s === "string")) {
    throw new BadAnswer(`${what}.granted_scopes is not a list of strings`);
  }
  const accountData = data["account"];
  const account = isObject(accountData)
    ? {
        id: optString(accountData["id"], `${what}.account.id`),
        login: optString(accountData["login"], `${what}.account.login`),
      }
    : null;
  const extra = data["extra"];
  const bearerToken = optString(data["bearer_token"], `${what}.bearer_token`);
  const apiKey = optString(data["api_key"], `${what}.api_key`);
  const password = optString(data["password"], `${what}.password`);
  const loggedIn = data["is_logged_in"];
  return new ProviderSecret({
    provider: optString(data["provider"], `${what}.provider`) ?? name,
    bearerToken,
    tokenType: optString(data["token_type"], `${what}.token_type`) ?? "bearer",
    grantedScopes: scopes as string[],
    isLoggedIn:
      loggedIn === undefined || loggedIn === null
        ? bearerToken !== null || apiKey !== null || password !== null
        : Boolean(loggedIn),
    expiresAt: parseDate(data["expires_at"], what),
    account,
    extra: isObject(extra) ? extra : {},
    authMode: optString(data["auth_mode"], `${what}.auth_mode`) ?? "oauth2",
    apiKey,
    username: optString(data["username"], `${what}.username`),
    password,
  });
}

export function parseSecrets(payload: unknown): Secrets {
  if (!isObject(payload)) throw new BadAnswer("the answer is not a JSON object");
  const providers: Record<string, ProviderSecret> = Object.create(null) as Record<string, ProviderSecret>;
  for (const [name, data] of Object.entries(payload)) {
    // Values that are not objects are reserved for future metadata: skip them.
    if (isObject(data)) providers[name] = parseProvider(name, data);
  }
  return Object.freeze(providers);
}
