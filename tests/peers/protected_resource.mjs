// An MCP-style protected resource (RFC 9728) on loopback, for tests: a request without a
// valid token gets 401 with `WWW-Authenticate: Bearer resource_metadata="…"`; its protected
// resource metadata names the authorization server; a request with a JWT access token that
// the authorization server signed for this resource (`aud`, checked by jose against the
// server's JWKS) gets 200 and the token's claims. Configured by argv[2]:
//   {"port": 0, "path": "/mcp", "authorization_server": "<issuer>", "scopes": ["mcp:read"],
//    "well_known": true, "header": true}
// (`well_known: false` serves no metadata document at the well-known URL; `header: false`
// answers 401 without the resource_metadata parameter). Prints {"resource", "port"} once it
// listens; stops on SIGTERM or when its standard input closes.
import process from 'node:process';
import http from 'node:http';
import { createInterface } from 'node:readline';

import { createRemoteJWKSet, jwtVerify } from 'jose';

const options = JSON.parse(process.argv[2] || '{}');
const path = options.path ?? '/mcp';
const issuer = options.authorization_server;
let jwks;

const server = http.createServer(async (req, res) => {
  const { port } = server.address();
  const resource = `http://127.0.0.1:${port}${path}`;
  const metadataPath = `/.well-known/oauth-protected-resource${path}`;
  const metadataUrl = `http://127.0.0.1:${port}${metadataPath}`;
  const url = new URL(req.url, `http://127.0.0.1:${port}`);
  if (url.pathname === metadataPath && (options.well_known ?? true)) {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({
      resource,
      authorization_servers: [issuer],
      scopes_supported: options.scopes ?? [],
      bearer_methods_supported: ['header'],
    }));
    return;
  }
  if (url.pathname !== path) {
    res.writeHead(404).end();
    return;
  }
  const challenge = (options.header ?? true)
    ? `Bearer resource_metadata="${metadataUrl}"`
    : 'Bearer';
  const auth = req.headers.authorization ?? '';
  if (!auth.startsWith('Bearer ')) {
    res.writeHead(401, { 'www-authenticate': challenge }).end();
    return;
  }
  try {
    jwks ??= createRemoteJWKSet(new URL(`${issuer}/jwks`));
    const { payload } = await jwtVerify(auth.slice(7), jwks, { issuer, audience: resource });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ ok: true, aud: payload.aud, sub: payload.sub, scope: payload.scope }));
  } catch (error) {
    res.writeHead(401, { 'www-authenticate': `${challenge}, error="invalid_token"` });
    res.end(JSON.stringify({ error: 'invalid_token', reason: error.code ?? error.name }));
  }
});
server.listen(options.port ?? 0, '127.0.0.1', () => {
  const { port } = server.address();
  process.stdout.write(`${JSON.stringify({ resource: `http://127.0.0.1:${port}${path}`, port })}\n`);
});

function stop() {
  server.close();
  process.exit(0);
}
process.on('SIGTERM', stop);
createInterface({ input: process.stdin }).on('close', stop);
