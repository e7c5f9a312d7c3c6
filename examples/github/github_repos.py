"""List the repositories of the GitHub account connected to this site, with PyGithub.

    APIAUTH_TOKEN=apiauth_site_… python github_repos.py

GITHUB_API_URL (default https://api.github.com) is PyGithub's `base_url`: GitHub Enterprise
Server's `https://HOST/api/v3`, or apiauth's emulator in the tests.
"""

from __future__ import annotations

import os

from github import Auth, Github

from apiauth import get_secrets

GITHUB_API_URL = os.environ.get("GITHUB_API_URL", "https://api.github.com")


def main() -> None:
    github = get_secrets()["github"]  # KeyError naming what is connected when GitHub is not
    if not github.is_logged_in or github.bearer_token is None:
        raise SystemExit("GitHub needs re-authorization: reconnect it in the apiauth dashboard.")
    # The token is an OAuth token like any other; apiauth keeps it valid, so no refresh here.
    client = Github(auth=Auth.Token(github.bearer_token), base_url=GITHUB_API_URL)
    user = client.get_user()
    print(f"GitHub account: {user.login} ({user.name})")
    print(f"granted scopes: {', '.join(github.granted_scopes)}")
    for repo in user.get_repos(sort="updated"):
        visibility = "private" if repo.private else "public"
        print(f"{repo.full_name}\t{visibility}\t{repo.stargazers_count} stars")
    client.close()


if __name__ == "__main__":
    main()
