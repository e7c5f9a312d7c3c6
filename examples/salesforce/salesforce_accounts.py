"""Query the Salesforce org connected to this site, with simple-salesforce.

    APIAUTH_TOKEN=apiauth_site_… python salesforce_accounts.py

No base URL to configure: Salesforce's token answer names the org's API base,
`instance_url`, and apiauth hands it on in `extra["instance_url"]`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import requests
from simple_salesforce import Salesforce

from apiauth import get_secrets

SOQL = "SELECT Id, Name, Industry FROM Account ORDER BY Name LIMIT 3"


class InstanceSession(requests.Session):
    """A `requests.Session` that sends simple-salesforce's calls to `instance_url` as given.

    simple-salesforce keeps only the host of `instance_url` and always calls
    `https://HOST/services/...`. A real org's instance URL is exactly `https://HOST`, so this
    session changes nothing there; apiauth's emulator serves its org at an http URL under a
    path, which this session puts back. It uses simple-salesforce's own `session=` option.
    """

    def __init__(self, instance_url: str) -> None:
        super().__init__()
        parts = urlsplit(instance_url)
        port = f":{parts.port}" if parts.port not in (None, 443) else ""
        self.sdk_base = f"https://{parts.hostname}{port}"
        self.instance_url = instance_url.rstrip("/")

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        if isinstance(url, str) and url.startswith(self.sdk_base + "/"):
            url = self.instance_url + url[len(self.sdk_base) :]
        return super().request(method, url, *args, **kwargs)


def main() -> None:
    salesforce = get_secrets()["salesforce"]
    if not salesforce.is_logged_in or salesforce.bearer_token is None:
        raise SystemExit("Salesforce needs re-authorization: reconnect it in the dashboard.")
    instance_url = str(salesforce.extra["instance_url"])
    # The access token is the session id; apiauth refreshes it when the org refuses it.
    client = Salesforce(
        instance_url=instance_url,
        session_id=salesforce.bearer_token,
        session=InstanceSession(instance_url),
    )
    login = salesforce.account.login if salesforce.account else None
    print(f"Salesforce user: {login}")
    result = client.query(SOQL)
    print(f"{result['totalSize']} accounts")
    for record in result["records"]:
        print(f"{record['Id']}\t{record['Name']}\t{record['Industry']}")


if __name__ == "__main__":
    main()
