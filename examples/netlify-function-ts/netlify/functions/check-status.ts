// Netlify's API Authentication sample function, running on apiauth: the only change is the
// import line, which was `import { getSecrets } from "@netlify/functions";`.
import { getSecrets } from "@apiauth/client";

export const handler = async (event: unknown) => {
  const secrets = await getSecrets(event);

  if (!secrets.spotify) {
    return {
      statusCode: 412,
      body: JSON.stringify({
        message:
          "Spotify is not connected for this site: connect it on the site's API Authentication " +
          "page in the apiauth dashboard (or `apiauth connect SITE spotify`).",
      }),
    };
  }

  // A connection that needs re-authorization has no usable token: isLoggedIn is false.
  const ready = secrets.spotify.isLoggedIn && Boolean(secrets.spotify.bearerToken);
  return {
    statusCode: 200,
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ready }),
  };
};
