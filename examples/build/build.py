"""A static-site build step: fetch the GitHub repositories of the site's account at build
time and write them into a page.

Run it the way CI should, with the site token in APIAUTH_TOKEN:

    apiauth run --ttl 300 --provider github -- python build.py

`apiauth run` mints a function token that lives 5 minutes and reads only GitHub, and runs
the build with it in APIAUTH_TOKEN, so the build never holds the long-lived site token.
"""

from __future__ import annotations

import html
import os
import sys
from pathlib import Path

import httpx

from apiauth import get_secrets

GITHUB_API_URL = os.environ.get("GITHUB_API_URL", "https://api.github.com").rstrip("/")
OUTPUT_DIR = Path(os.environ.get("BUILD_OUTPUT_DIR", "public"))


def fetch_repositories(token: str) -> tuple[str, list[dict[str, object]]]:
    """The account's login and its repositories, every page of them."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
    }
    with httpx.Client(headers=headers, timeout=30) as http:
        user = http.get(f"{GITHUB_API_URL}/user").raise_for_status().json()
        repos: list[dict[str, object]] = []
        url: str | None = f"{GITHUB_API_URL}/user/repos?per_page=100&sort=updated"
        while url:
            page = http.get(url).raise_for_status()
            repos += page.json()
            url = page.links.get("next", {}).get("url")  # GitHub pages with a Link header
    return str(user["login"]), repos


def render(login: str, repos: list[dict[str, object]]) -> str:
    items = "\n".join(
        f'    <li><a href="{html.escape(str(repo["html_url"]))}">'
        f"{html.escape(str(repo['full_name']))}</a>"
        f" &ndash; {html.escape(str(repo.get('description') or ''))}</li>"
        for repo in repos
        if not repo.get("private")  # a public page: private repositories stay out
    )
    return (
        '<!doctype html>\n<html lang="en">\n<meta charset="utf-8">\n'
        f"<title>Repositories of {html.escape(login)}</title>\n"
        f"<h1>Repositories of {html.escape(login)}</h1>\n<ul>\n{items}\n</ul>\n</html>\n"
    )


def main() -> None:
    if not os.environ.get("APIAUTH_TOKEN", "").startswith("apiauth_fn_"):
        print(
            "warning: APIAUTH_TOKEN is not a function token; start the build with "
            "`apiauth run -- python build.py` so that it never holds the site token",
            file=sys.stderr,
        )
    secrets = get_secrets()
    print(f"build can read: {', '.join(sorted(secrets))}")
    github = secrets["github"]
    if not github.is_logged_in or github.bearer_token is None:
        raise SystemExit("GitHub needs re-authorization: reconnect it in the apiauth dashboard.")
    login, repos = fetch_repositories(github.bearer_token)
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    page = OUTPUT_DIR / "index.html"
    page.write_text(render(login, repos), encoding="utf-8")
    public = sum(1 for repo in repos if not repo.get("private"))
    print(f"wrote {page} with {public} public repositories of {login}")


if __name__ == "__main__":
    main()
