// oauth2-mock-server (a third-party OAuth 2 / OpenID Connect test server) on loopback, for
// tests. Configured by one JSON document in argv[2] ({"port": 0}); prints one JSON line,
// {"issuer", "port"}, once it listens. It accepts any client id, consents at once (its
// /authorize redirects straight back with a code) and signs JWT access tokens. Stops on
// SIGTERM or when its standard input closes.
import process from 'node:process';
import { createInterface } from 'node:readline';

import { OAuth2Server } from 'oauth2-mock-server';

const options = JSON.parse(process.argv[2] || '{}');
const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
await server.start(options.port ?? 0, '127.0.0.1');
const address = server.address();
const issuer = `http://127.0.0.1:${address.port}`;
server.issuer.url = issuer;
process.stdout.write(`${JSON.stringify({ issuer, port: address.port })}\n`);

async function stop() {
  await server.stop();
  process.exit(0);
}
process.on('SIGTERM', stop);
createInterface({ input: process.stdin }).on('close', stop);
