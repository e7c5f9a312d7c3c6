import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";
import { inspect } from "node:util";

import {
  BrokerUnavailable,
  InvalidRequest,
  NotConfigured,
  ProviderSecret,
  Unauthorized,
  clearCache,
  createConnectSession,
  createFunctionToken,
  deleteVisitor,
  getSecrets,
  proxy,
  withSecrets,
} from "@apiauth/client";

import { SITE_TOKEN, SPOTIFY, startBroker } from "./fake-broker.mjs";

let broker;
let options;
before(async () => {
  broker = await startBroker(() => ({ json: { spotify: SPOTIFY } }));
  options = { url: broker.url, env: { APIAUTH_TOKEN: SITE_TOKEN } };
});
after(() => broker.close());
afterEach(() => {
  clearCache();
  broker.requests.length = 0;
  broker.answer = () => ({ json: { spotify: SPOTIFY } });
});

describe("getSecrets", () => {
  test("reads the site's providers in JavaScript's casing, as Netlify's sample expects", async () => {
    broker.answer = () => ({
      json: {
        spotify: { ...SPOTIFY, expires_at: "2030-01-02T03:04:05+00:00" },
        openai: { provider: "openai", auth_mode: "api_key", api_key: "sk-emu-key", bearer_token: null, is_logged_in: true },
        salesforce: { ...SPOTIFY, provider: "salesforce", extra: { instance_url: "https://acme.my.salesforce.com" } },
        _meta: "reserved",
      },
    });
    const secrets = await getSecrets(undefined, options);
    assert.equal(secrets.spotify.isLoggedIn, true);
    assert.equal(secrets.spotify.bearerToken, "BQD-spotify-access-token");
    assert.deepEqual(secrets.spotify.grantedScopes, ["user-read-email", "playlist-read-private"]);
    assert.equal(secrets.spotify.tokenType, "bearer");
    assert.equal(secrets.spotify.authMode, "oauth2");
    assert.ok(secrets.spotify.expiresAt instanceof Date);
    assert.equal(secrets.spotify.expiresAt.toISOString(), "2030-01-02T03:04:05.000Z");
    assert.deepEqual(secrets.spotify.account, { id: "emulated-listener", login: null });
    assert.equal(secrets.openai.apiKey, "sk-emu-key");
    assert.equal(secrets.openai.authMode, "api_key");
    assert.equal(secrets.salesforce.extra.instance_url, "https://acme.my.salesforce.com");
    assert.equal(secrets.github, undefined, "a provider that is not connected reads undefined");
    assert.equal(secrets._meta, undefined, "non-object values are not providers");
    assert.ok(Object.isFrozen(secrets));
    assert.equal(broker.requests[0].url, "/api/v1/secrets");
    assert.equal(broker.requests[0].headers.authorization, `Bearer ${SITE_TOKEN}`);
    assert.match(broker.requests[0].headers["user-agent"], /^apiauth-js\//);
  });

  test("takes the token from the event's apiauth_token before APIAUTH_TOKEN", async () => {
    await getSecrets({ apiauth_token: "apiauth_fn_from-the-event" }, options);
    assert.equal(broker.requests[0].headers.authorization, "Bearer apiauth_fn_from-the-event");
  });

  test("an explicit token wins over the event's", async () => {
    await getSecrets({ apiauth_token: "apiauth_fn_from-the-event" }, { ...options, token: "apiauth_fn_explicit" });
    assert.equal(broker.requests[0].headers.authorization, "Bearer apiauth_fn_explicit");
  });

  test("without a token says how to get one, and asks nothing of the broker", async () => {
    await assert.rejects(getSecrets(undefined, { url: broker.url, env: {} }), (error) => {
      assert.ok(error instanceof NotConfigured);
      assert.match(error.message, /APIAUTH_TOKEN is not set/);
      assert.match(error.message, /apiauth sites enable SITE/);
      return true;
    });
    assert.equal(broker.requests.length, 0);
  });

  test("a visitor's secrets are asked for with visitor_id", async () => {
    await getSecrets(undefined, { ...options, visitorId: "alice@example.com" });
    assert.equal(broker.requests[0].url, "/api/v1/secrets?visitor_id=alice%40example.com");
  });

  test("a rejected token is Unauthorized with what to do, never the token", async () => {
    broker.answer = () => ({ status: 401, json: { error: { message: "invalid token" } } });
    await assert.rejects(getSecrets(undefined, options), (error) => {
      assert.ok(error instanceof Unauthorized);
      assert.equal(error.statusCode, 401);
      assert.match(error.message, /rejected the token apiauth_site_… \(HTTP 401\)/);
      assert.match(error.message, /update APIAUTH_TOKEN/);
      assert.ok(!error.message.includes(SITE_TOKEN));
      return true;
    });
  });

  test("a broker that cannot be reached is BrokerUnavailable naming the URL", async () => {
    const closed = await startBroker(() => ({}));
    await closed.close();
    await assert.rejects(getSecrets(undefined, { ...options, url: closed.url }), (error) => {
      assert.ok(error instanceof BrokerUnavailable);
      assert.match(error.message, new RegExp(`broker at ${closed.url} is unavailable: could not connect`));
      return true;
    });
  });

  test("an answer that is not JSON, or not the documented shape, is BrokerUnavailable", async () => {
    broker.answer = () => ({ text: "<html>proxy error</html>" });
    await assert.rejects(getSecrets(undefined, options), /the answer is not JSON/);
    broker.answer = () => ({ json: { spotify: { ...SPOTIFY, granted_scopes: 7 } } });
    await assert.rejects(getSecrets(undefined, options), /granted_scopes is not a list of strings/);
  });

  test("a redirect is not followed: the token would go with it", async () => {
    broker.answer = () => ({ status: 302, headers: { location: "https://elsewhere.example/api/v1/secrets" } });
    await assert.rejects(getSecrets(undefined, options), (error) => {
      assert.ok(error instanceof BrokerUnavailable);
      assert.match(error.message, /redirect to https:\/\/elsewhere\.example\/api\/v1\/secrets; set APIAUTH_URL/);
      return true;
    });
    assert.equal(broker.requests.length, 1);
  });

  test("an APIAUTH_URL that is not a URL is BrokerUnavailable saying so", async () => {
    await assert.rejects(getSecrets(undefined, { ...options, url: "not a url" }), (error) => {
      assert.ok(error instanceof BrokerUnavailable);
      assert.match(error.message, /APIAUTH_URL is not a URL/);
      return true;
    });
  });

  test("a user:password in APIAUTH_URL is not repeated in messages", async () => {
    broker.answer = () => ({ status: 500 });
    const url = broker.url.replace("http://", "http://user:hunter2@");
    await assert.rejects(getSecrets(undefined, { ...options, url }), (error) => {
      assert.ok(!error.message.includes("hunter2"));
      assert.equal(error.url, broker.url);
      return true;
    });
  });
});

describe("the cache", () => {
  test("a warm instance asks the broker once, until five minutes have passed", async () => {
    let now = Date.parse("2030-01-01T00:00:00Z");
    const clocked = { ...options, now: () => now };
    await getSecrets(undefined, clocked);
    now += 299_000;
    await getSecrets(undefined, clocked);
    assert.equal(broker.requests.length, 1);
    now += 2_000;
    await getSecrets(undefined, clocked);
    assert.equal(broker.requests.length, 2);
  });

  test("an answer lives until the earliest expiry minus a minute", async () => {
    let now = Date.parse("2030-01-01T00:00:00Z");
    broker.answer = () => ({ json: { spotify: { ...SPOTIFY, expires_at: "2030-01-01T00:03:00Z" } } });
    const clocked = { ...options, now: () => now };
    await getSecrets(undefined, clocked);
    now += 119_000;
    await getSecrets(undefined, clocked);
    assert.equal(broker.requests.length, 1);
    now += 1_000;
    await getSecrets(undefined, clocked);
    assert.equal(broker.requests.length, 2);
  });

  test("a token expiring within the margin is not cached", async () => {
    const now = Date.parse("2030-01-01T00:00:00Z");
    broker.answer = () => ({ json: { spotify: { ...SPOTIFY, expires_at: "2030-01-01T00:00:30Z" } } });
    await getSecrets(undefined, { ...options, now: () => now });
    await getSecrets(undefined, { ...options, now: () => now });
    assert.equal(broker.requests.length, 2);
  });

  test("entries are per token, and clearCache forgets them all", async () => {
    await getSecrets(undefined, options);
    await getSecrets(undefined, { ...options, token: "apiauth_fn_other" });
    await getSecrets(undefined, options);
    assert.equal(broker.requests.length, 2);
    clearCache();
    await getSecrets(undefined, options);
    assert.equal(broker.requests.length, 3);
  });

  test("concurrent cold calls share one request", async () => {
    const all = await Promise.all([1, 2, 3, 4].map(() => getSecrets(undefined, options)));
    assert.equal(broker.requests.length, 1);
    assert.ok(all.every((secrets) => secrets === all[0]));
  });

  test("a failed answer is not cached", async () => {
    broker.answer = () => ({ status: 503 });
    await assert.rejects(getSecrets(undefined, options), BrokerUnavailable);
    broker.answer = () => ({ json: { spotify: SPOTIFY } });
    assert.equal((await getSecrets(undefined, options)).spotify.isLoggedIn, true);
  });
});

describe("withSecrets", () => {
  test("hands the handler (event, context, secrets), the event's token included", async () => {
    const handler = withSecrets(async (event, context, secrets) => ({
      path: event.path,
      context,
      ready: secrets.spotify?.isLoggedIn,
    }), options);
    const answer = await handler({ path: "/check", apiauth_token: "apiauth_fn_evt" }, { requestId: "r1" });
    assert.deepEqual(answer, { path: "/check", context: { requestId: "r1" }, ready: true });
    assert.equal(broker.requests[0].headers.authorization, "Bearer apiauth_fn_evt");
  });
});

describe("createFunctionToken", () => {
  test("mints a token from the site token with a TTL and providers", async () => {
    broker.answer = () => ({ status: 201, json: { token: "apiauth_fn_minted", expires_at: "2030-01-01T00:15:00Z" } });
    const minted = await createFunctionToken({ ...options, ttlSeconds: 600, providers: ["spotify"] });
    assert.equal(minted.token, "apiauth_fn_minted");
    assert.equal(minted.expiresAt.toISOString(), "2030-01-01T00:15:00.000Z");
    assert.deepEqual(broker.requests[0].body, { ttl_seconds: 600, providers: ["spotify"] });
    assert.equal(broker.requests[0].method, "POST");
  });

  test("a TTL the broker refuses is InvalidRequest with the broker's reason", async () => {
    broker.answer = () => ({ status: 422, json: { error: { message: "ttl_seconds must be between 1 and 86400" } } });
    await assert.rejects(createFunctionToken({ ...options, ttlSeconds: 0 }), (error) => {
      assert.ok(error instanceof InvalidRequest);
      assert.match(error.message, /refused the function token request: ttl_seconds must be between 1 and 86400/);
      return true;
    });
  });

  test("a function token cannot mint another: Unauthorized", async () => {
    broker.answer = () => ({ status: 403, json: { error: { message: "a function token cannot mint tokens" } } });
    await assert.rejects(createFunctionToken({ ...options, token: "apiauth_fn_x" }), (error) => {
      assert.ok(error instanceof Unauthorized);
      assert.match(error.message, /refused to mint a function token with the token apiauth_fn_…: a function token/);
      return true;
    });
  });
});

describe("proxy", () => {
  test("sends a provider path through the broker with the apiauth token", async () => {
    broker.answer = (request) => ({ json: { path: request.url } });
    const github = proxy("github", options);
    const answer = await github("/user/repos?per_page=2", { headers: { Accept: "application/vnd.github+json" } });
    assert.deepEqual(await answer.json(), { path: "/api/v1/proxy/github/user/repos?per_page=2" });
    assert.equal(broker.requests[0].headers.authorization, `Bearer ${SITE_TOKEN}`);
    assert.equal(broker.requests[0].headers.accept, "application/vnd.github+json");
    await github("user");
    assert.equal(broker.requests[1].url, "/api/v1/proxy/github/user");
  });

  test("never sends the token to another host, or to another provider's proxy", async () => {
    const github = proxy("github", options);
    for (const elsewhere of [
      "https://api.github.com/user",
      "//evil.example/user",
      `${broker.url}/api/v1/secrets`,
      `${broker.url}/api/v1/proxy/gitlab/user`,
    ]) {
      await assert.rejects(github(elsewhere), (error) => {
        assert.ok(error instanceof InvalidRequest, elsewhere);
        assert.match(error.message, /refusing to send the apiauth token/);
        return true;
      });
    }
    assert.equal(broker.requests.length, 0);
    await github(`${broker.url}/api/v1/proxy/github/user`);
    assert.equal(broker.requests.length, 1, "an absolute URL under this proxy is fine");
  });

  test("a visitor's connection is chosen with the Apiauth-Visitor header", async () => {
    await proxy("github", { ...options, visitorId: "bob" })("/user");
    assert.equal(broker.requests[0].headers["apiauth-visitor"], "bob");
  });
});

describe("visitors", () => {
  test("createConnectSession asks for a link for one visitor", async () => {
    broker.answer = () => ({ status: 201, json: { url: `${broker.url}/connect/abc`, expires_at: "2030-01-01T00:30:00Z" } });
    const link = await createConnectSession("alice", "github", "https://site.example/back", {
      ...options,
      scopes: { github: ["read:user"] },
    });
    assert.equal(link.url, `${broker.url}/connect/abc`);
    assert.ok(link.expiresAt instanceof Date);
    assert.deepEqual(broker.requests[0].body, {
      visitor_id: "alice",
      providers: ["github"],
      return_url: "https://site.example/back",
      scopes: { github: ["read:user"] },
    });
  });

  test("a refused connect session is InvalidRequest", async () => {
    broker.answer = () => ({ status: 422, json: { error: { message: "return_url must be https" } } });
    await assert.rejects(createConnectSession("alice", ["github"], "ftp://x", options), /refused to create a connect session: return_url must be https/);
  });

  test("deleteVisitor erases a visitor's connections", async () => {
    broker.answer = () => ({ json: { deleted_connections: 2, revoked_at_provider: 1 } });
    const deleted = await deleteVisitor("alice/1", options);
    assert.deepEqual({ ...deleted }, { visitorId: "alice/1", deletedConnections: 2, revokedAtProvider: 1 });
    assert.equal(broker.requests[0].method, "DELETE");
    assert.equal(broker.requests[0].url, "/api/v1/visitors/alice%2F1");
  });
});

describe("logging a secret", () => {
  test("console.log shows neither the token nor a key nor a password", async () => {
    broker.answer = () => ({
      json: {
        spotify: SPOTIFY,
        twilio: { provider: "twilio", auth_mode: "basic", username: "emu-twilio", password: "emu-twilio-password-1234" },
      },
    });
    const secrets = await getSecrets(undefined, options);
    assert.ok(secrets.spotify instanceof ProviderSecret);
    const shown = inspect(secrets, { depth: 5 });
    assert.ok(!shown.includes(SPOTIFY.bearer_token), shown);
    assert.ok(!shown.includes("emu-twilio-password-1234"), shown);
    assert.match(shown, /provider: 'spotify'/);
    assert.equal(String(secrets.spotify), "[ProviderSecret spotify]");
  });
});
