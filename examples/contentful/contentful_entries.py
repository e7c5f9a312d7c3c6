"""List the spaces and entries of the Contentful account connected to this site, with
contentful-management.

    APIAUTH_TOKEN=apiauth_site_… python contentful_entries.py

CONTENTFUL_API_URL (default https://api.contentful.com) becomes the client's `api_url` (host
and path, e.g. api.eu.contentful.com for the EU data region) and `https` options.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import contentful_management

from apiauth import get_secrets

CONTENTFUL_API_URL = os.environ.get("CONTENTFUL_API_URL", "https://api.contentful.com")


def main() -> None:
    contentful = get_secrets()["contentful"]
    if not contentful.is_logged_in or contentful.bearer_token is None:
        raise SystemExit("Contentful needs re-authorization: reconnect it in the dashboard.")
    api = urlsplit(CONTENTFUL_API_URL)
    client = contentful_management.Client(
        contentful.bearer_token,
        api_url=api.netloc + api.path.rstrip("/"),
        https=api.scheme == "https",
    )
    me = client.users().me()
    print(f"Contentful account: {me.email}")
    for space in client.spaces().all():
        print(f"space {space.id}: {space.name}")
        for entry in client.entries(space.id, "master").all():
            print(f"  entry {entry.id}\t{entry.fields().get('title')}")


if __name__ == "__main__":
    main()
