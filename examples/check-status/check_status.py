"""The check every variant shares: is Spotify connected for this site, and logged in?

Ported from the function in Netlify's API Authentication docs, which answers `{"ready":
isLoggedIn}` for Spotify, or a message when the site has not connected it.
"""

from __future__ import annotations

from apiauth import Secrets

NOT_CONNECTED = (
    "Spotify is not connected for this site: connect it on the site's API Authentication "
    "page in the apiauth dashboard (or `apiauth connect SITE spotify`)."
)


def check_status(secrets: Secrets) -> tuple[int, dict[str, object]]:
    """(HTTP status, JSON body): 200 `{"ready": ...}`, or 412 with a message."""
    if secrets.spotify is None:
        return 412, {"message": NOT_CONNECTED}
    # False when the connection needs re-authorization (its refresh token was refused).
    return 200, {"ready": secrets.spotify.is_logged_in}
