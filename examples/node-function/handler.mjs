// A plain Node function (ESM JavaScript): `withSecrets` hands the handler `(event, context,
// secrets)`, then the handler calls Spotify's API with the bearer token. Run it:
//   APIAUTH_TOKEN=apiauth_site_… node handler.mjs
// SPOTIFY_API_URL (default https://api.spotify.com/v1) is the API's base.
import { argv, env } from "node:process";
import { pathToFileURL } from "node:url";

import { withSecrets } from "@apiauth/client";

const SPOTIFY_API_URL = (env.SPOTIFY_API_URL ?? "https://api.spotify.com/v1").replace(/\/+$/, "");

/** @type {(event: unknown, context: unknown) => Promise<{ statusCode: number, body: string }>} */
export const handler = withSecrets(async (_event, _context, secrets) => {
  const spotify = secrets.spotify;
  if (!spotify?.isLoggedIn || !spotify.bearerToken) {
    const message = spotify
      ? "Spotify needs re-authorization: reconnect it in the apiauth dashboard."
      : "Spotify is not connected for this site: `apiauth connect SITE spotify`.";
    return { statusCode: 412, body: JSON.stringify({ message }) };
  }
  const me = await fetch(`${SPOTIFY_API_URL}/me`, {
    headers: { Authorization: `Bearer ${spotify.bearerToken}` },
  });
  if (!me.ok) return { statusCode: 502, body: JSON.stringify({ message: `Spotify answered ${me.status}` }) };
  /** @type {{ display_name: string, id: string }} */
  const profile = await me.json();
  return { statusCode: 200, body: JSON.stringify({ ready: true, account: profile.display_name }) };
});

if (argv[1] && import.meta.url === pathToFileURL(argv[1]).href) {
  const answer = await handler({}, {});
  console.log(answer.body);
}
