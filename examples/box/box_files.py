"""List the root folder of the Box account connected to this site, with box-sdk-gen.

    APIAUTH_TOKEN=apiauth_site_… python box_files.py

BOX_API_URL (default https://api.box.com) is `BaseUrls(base_url=...)` of the SDK's
`NetworkSession`.
"""

from __future__ import annotations

import os

from box_sdk_gen import BaseUrls, BoxClient, BoxDeveloperTokenAuth, NetworkSession

from apiauth import get_secrets

BOX_API_URL = os.environ.get("BOX_API_URL", "https://api.box.com")


def main() -> None:
    box = get_secrets()["box"]
    if not box.is_logged_in or box.bearer_token is None:
        raise SystemExit("Box needs re-authorization: reconnect it in the apiauth dashboard.")
    # BoxDeveloperTokenAuth sends a token it is given and never refreshes it: right here,
    # because Box's refresh tokens are single use and apiauth is the one that spends them.
    client = BoxClient(
        auth=BoxDeveloperTokenAuth(token=box.bearer_token),
        network_session=NetworkSession(base_urls=BaseUrls(base_url=BOX_API_URL)),
    )
    me = client.users.get_user_me()
    print(f"Box account: {me.name} ({me.login})")
    items = client.folders.get_folder_items("0", limit=100)
    for entry in items.entries or []:
        print(f"{entry.type.value}\t{entry.id}\t{entry.name}")


if __name__ == "__main__":
    main()
