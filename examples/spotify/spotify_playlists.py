"""Show the Spotify account connected to this site and its playlists, with spotipy.

    APIAUTH_TOKEN=apiauth_site_… python spotify_playlists.py

SPOTIFY_API_URL (default https://api.spotify.com/v1) becomes spotipy's `prefix`.
"""

from __future__ import annotations

import os

import spotipy

from apiauth import get_secrets

SPOTIFY_API_URL = os.environ.get("SPOTIFY_API_URL", "https://api.spotify.com/v1")


def main() -> None:
    spotify = get_secrets()["spotify"]
    if not spotify.is_logged_in or spotify.bearer_token is None:
        raise SystemExit("Spotify needs re-authorization: reconnect it in the apiauth dashboard.")
    # `auth=` takes a bearer token as it is: Spotify's tokens last an hour, and apiauth hands
    # out one refreshed ahead of its expiry, so spotipy needs no auth manager of its own.
    client = spotipy.Spotify(auth=spotify.bearer_token)
    # spotipy has no constructor option for the API base; `prefix` is its public attribute.
    client.prefix = SPOTIFY_API_URL.rstrip("/") + "/"
    me = client.me()
    print(f"Spotify account: {me['display_name']} ({me['id']}, {me['product']})")
    page = client.current_user_playlists(limit=2)
    while page:
        for playlist in page["items"]:
            print(f"{playlist['name']}\t{playlist['tracks']['total']} tracks")
        page = client.next(page)  # follows the `next` URL of Spotify's paging object


if __name__ == "__main__":
    main()
