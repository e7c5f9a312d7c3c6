/** Typed errors, one class per thing the caller can do something about. None ever holds a token. */

export interface ApiAuthErrorDetails {
  /** The broker's URL, without any user:password part. */
  url?: string | undefined;
  /** The HTTP status the broker answered with, when it answered. */
  statusCode?: number | undefined;
}

/** Base of every error thrown by `@apiauth/client`. */
export class ApiAuthError extends Error {
  readonly url: string | undefined;
  readonly statusCode: number | undefined;

  constructor(message: string, details: ApiAuthErrorDetails = {}) {
    super(message);
    this.name = new.target.name;
    this.url = details.url;
    this.statusCode = details.statusCode;
  }
}

/** No token: `APIAUTH_TOKEN` is unset and none was passed. */
export class NotConfigured extends ApiAuthError {}

/** The broker rejected the token (HTTP 401/403): revoked, rotated or expired. */
export class Unauthorized extends ApiAuthError {}

/** The broker could not be reached or gave an unusable answer. */
export class BrokerUnavailable extends ApiAuthError {}

/** The broker refused the values asked for (HTTP 404/409/422), or a call the client will not make. */
export class InvalidRequest extends ApiAuthError {}
