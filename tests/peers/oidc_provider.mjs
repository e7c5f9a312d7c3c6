// oidc-provider (a certified OpenID Provider that nobody on this project wrote) on loopback,
// for tests. Configured by one JSON document in argv[2]; prints one JSON line, {"issuer", "port"},
// once it listens. Stops on SIGTERM or when its standard input closes (the test died).
//
// Options (all optional):
//   port                 0 (any free port)
//   path                 "" or an issuer path such as "/tenant-a" (the issuer is then
//                        http://127.0.0.1:<port>/tenant-a, served under that prefix)
//   registration         true: RFC 7591 dynamic client registration, open to anyone
//   registration_management  true: RFC 7592 read/update/delete with the registration token
//   client_id_metadata_document  false: Client ID Metadata Documents (https client ids only)
//   client_credentials   true
//   clients              [] pre-registered clients (oidc-provider client metadata)
//   resources            {"<resource URL>": {"scope": "mcp:read mcp:write"}}: resource servers
//                        (RFC 8707); their access tokens are JWTs with `aud` = the resource
//   access_token_ttl     3600 (seconds)
//   scopes               extra scopes to list in scopes_supported
//   fetch_loopback       false: let oidc-provider fetch Client ID Metadata Documents from
//                        loopback (it refuses special-use addresses, rightly; the tests' apiauth
//                        listens on 127.0.0.1). Trust a test CA with NODE_EXTRA_CA_CERTS.
import process from 'node:process';
import http from 'node:http';
import { createInterface } from 'node:readline';

import Provider, { errors } from 'oidc-provider';

const options = JSON.parse(process.argv[2] || '{}');
const path = options.path ?? '';
const resources = options.resources ?? {};
const accessTokenTTL = options.access_token_ttl ?? 3600;

const configuration = {
  clients: options.clients ?? [],
  scopes: ['openid', 'offline_access', 'profile', 'email', ...(options.scopes ?? [])],
  claims: { openid: ['sub'], profile: ['preferred_username', 'name'], email: ['email'] },
  // Every login is accepted (devInteractions' form takes any name): the account is the name.
  async findAccount(_ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, name: id, email: `${id}@example.com` };
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    registration: { enabled: options.registration ?? true },
    registrationManagement: {
      enabled: (options.registration ?? true) && (options.registration_management ?? true),
      rotateRegistrationAccessToken: false,
    },
    clientIdMetadataDocument: {
      enabled: options.client_id_metadata_document ?? false,
      ack: 'draft-02', // the draft version this oidc-provider release implements
    },
    clientCredentials: { enabled: options.client_credentials ?? true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // oidc-provider's default: a token request must name its resource again (RFC 8707
      // §2.2), or it gets a token for the userinfo endpoint instead.
      useGrantedResource: async () => false,
      async getResourceServerInfo(_ctx, resourceIndicator) {
        const server = resources[resourceIndicator];
        if (!server) throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
        return {
          scope: server.scope ?? '',
          audience: resourceIndicator,
          accessTokenTTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  ttl: { AccessToken: accessTokenTTL, ClientCredentials: accessTokenTTL },
  cookies: { keys: ['apiauth-tests-only-cookie-key'] },
};
if (options.fetch_loopback) {
  configuration.fetch = (url, init) => {
    const { dispatcher, ...rest } = init;
    return globalThis.fetch(url, rest);
  };
}

const server = http.createServer();
server.listen(options.port ?? 0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}${path}`;
  const provider = new Provider(issuer, configuration);
  const callback = provider.callback();
  server.on('request', (req, res) => {
    if (path) {
      if (req.url !== path && !req.url.startsWith(`${path}/`) && !req.url.startsWith(`${path}?`)) {
        res.writeHead(404).end();
        return;
      }
      req.originalUrl = req.url;
      req.url = req.url.slice(path.length) || '/';
    }
    callback(req, res);
  });
  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
});

function stop() {
  server.close();
  process.exit(0);
}
process.on('SIGTERM', stop);
createInterface({ input: process.stdin }).on('close', stop);
