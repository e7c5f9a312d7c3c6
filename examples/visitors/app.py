"""A site that lets each of its visitors connect their own GitHub account, then lists that
visitor's repositories with PyGithub, acting on their behalf.

    APIAUTH_TOKEN=apiauth_site_… flask --app app run --port 5000

The site identifies its visitors its own way (here a `visitor` query parameter stands in for
the site's login session); apiauth keeps each visitor's tokens apart from everyone else's.
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, redirect, request, url_for
from flask.typing import ResponseReturnValue
from github import Auth, Github

import apiauth

GITHUB_API_URL = os.environ.get("GITHUB_API_URL", "https://api.github.com")

app = Flask(__name__)


def visitor_id() -> str:
    visitor = request.args.get("visitor", "")
    if not visitor:
        raise ValueError("say who you are: ?visitor=<id>")
    return visitor


@app.get("/connect")
def connect() -> ResponseReturnValue:
    """Send the visitor to apiauth's hosted connect page (a single-use link, 30 minutes)."""
    visitor = visitor_id()
    back = url_for("connected", visitor=visitor, _external=True)
    link = apiauth.create_connect_session(visitor, ["github"], back)
    return redirect(link.url, code=303)


@app.get("/connected")
def connected() -> ResponseReturnValue:
    """Where apiauth sends the visitor back, with `apiauth_connected` or `apiauth_error`."""
    if "apiauth_error" in request.args:
        return jsonify({"connected": False, "reason": request.args["apiauth_error"]}), 400
    # get_secrets() caches answers for a few minutes; this visitor's just changed.
    apiauth.clear_cache()
    return jsonify({"connected": request.args.get("apiauth_connected")})


@app.get("/repos")
def repos() -> ResponseReturnValue:
    """The visitor's own repositories, with their own GitHub token."""
    visitor = visitor_id()
    github = apiauth.get_secrets(visitor_id=visitor).github
    if github is None or not github.is_logged_in or github.bearer_token is None:
        return jsonify({"message": f"{visitor} has not connected GitHub: open /connect"}), 404
    client = Github(auth=Auth.Token(github.bearer_token), base_url=GITHUB_API_URL)
    user = client.get_user()
    names = [repo.full_name for repo in user.get_repos()]
    client.close()
    return jsonify({"visitor": visitor, "login": user.login, "repos": names})


@app.post("/forget")
def forget() -> ResponseReturnValue:
    """A data-protection request: revoke and erase everything of this visitor's."""
    deletion = apiauth.delete_visitor(visitor_id())
    apiauth.clear_cache()
    return jsonify(
        {
            "deleted_connections": deletion.deleted_connections,
            "revoked_at_provider": deletion.revoked_at_provider,
        }
    )
