// A stand-in for the broker's HTTP API on a loopback port, for the package's unit tests: it
// answers what each test tells it to and records what it was sent. The end-to-end tests
// (tests/test_js_client.py) run the package against a real `apiauth serve --demo`.
import { createServer } from "node:http";

export async function startBroker(answer) {
  const requests = [];
  const server = createServer(async (req, res) => {
    let body = "";
    for await (const chunk of req) body += chunk;
    const request = { method: req.method, url: req.url, headers: req.headers, body: body ? JSON.parse(body) : undefined };
    requests.push(request);
    const { status = 200, json, text, headers = {} } = (await broker.answer(request)) ?? {};
    res.writeHead(status, { "content-type": text === undefined ? "application/json" : "text/plain", ...headers });
    res.end(text ?? (json === undefined ? "" : JSON.stringify(json)));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const broker = {
    answer,
    requests,
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
  return broker;
}

export const SITE_TOKEN = "apiauth_site_unit-test-token-0123456789";

export const SPOTIFY = {
  provider: "spotify",
  bearer_token: "BQD-spotify-access-token",
  token_type: "bearer",
  granted_scopes: ["user-read-email", "playlist-read-private"],
  is_logged_in: true,
  expires_at: null,
  account: { id: "emulated-listener", login: null },
  extra: {},
  auth_mode: "oauth2",
};
