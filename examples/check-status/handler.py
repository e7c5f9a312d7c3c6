"""A plain function handler: `handler(event, context)` returns the JSON body as a dict.

`@with_secrets` fetches the site's secrets (APIAUTH_TOKEN, APIAUTH_URL) before each call and
passes them as `secrets=`; answers are cached in the process, so a warm instance does not ask
the broker every time. Run it: `python handler.py`.
"""

from __future__ import annotations

import json
from typing import Any

from check_status import check_status

from apiauth import Secrets, with_secrets


@with_secrets
def handler(event: dict[str, Any], context: object, *, secrets: Secrets) -> dict[str, object]:
    _status, body = check_status(secrets)
    return body


if __name__ == "__main__":
    print(json.dumps(handler({}, None)))
