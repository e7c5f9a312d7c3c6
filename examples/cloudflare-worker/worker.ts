// A Cloudflare-Workers-style fetch handler (also Deno and Bun's `export default { fetch }`).
// Workers have no process.env: the token and the broker come from the Worker's bindings
// (`wrangler secret put APIAUTH_TOKEN`, `APIAUTH_URL` in wrangler.toml's [vars]).
import { NotConfigured, getSecrets } from "@apiauth/client";

export interface Env {
  APIAUTH_TOKEN?: string;
  APIAUTH_URL?: string;
  /** GitHub's API base (default https://api.github.com). */
  GITHUB_API_URL?: string;
}

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    let secrets;
    try {
      secrets = await getSecrets(undefined, { env: { ...env } });
    } catch (error) {
      if (error instanceof NotConfigured) return Response.json({ message: error.message }, { status: 500 });
      throw error;
    }
    const github = secrets.github;
    if (!github?.isLoggedIn || !github.bearerToken) {
      return Response.json({ message: "GitHub is not connected for this site" }, { status: 412 });
    }
    const api = (env.GITHUB_API_URL ?? "https://api.github.com").replace(/\/+$/, "");
    const user = await fetch(`${api}/user`, {
      headers: {
        Authorization: `Bearer ${github.bearerToken}`,
        Accept: "application/vnd.github+json",
        "User-Agent": "apiauth-worker-example",
      },
    });
    if (!user.ok) return Response.json({ message: `GitHub answered ${user.status}` }, { status: 502 });
    const { login } = (await user.json()) as { login: string };
    return Response.json({
      path: new URL(request.url).pathname,
      login,
      scopes: github.grantedScopes,
    });
  },
};
