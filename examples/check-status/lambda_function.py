"""An AWS Lambda handler behind API Gateway (or a Lambda function URL).

Configure the function with the environment variables APIAUTH_TOKEN (a function token is
best; see the README) and APIAUTH_URL, and the handler `lambda_function.lambda_handler`.
Run it locally with a sample event: `python lambda_function.py`.
"""

from __future__ import annotations

import json
from typing import Any

from check_status import check_status

from apiauth import Secrets, with_secrets


@with_secrets
def lambda_handler(event: dict[str, Any], context: object, *, secrets: Secrets) -> dict[str, Any]:
    status, body = check_status(secrets)
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", "Cache-Control": "no-store"},
        "body": json.dumps(body),
    }


if __name__ == "__main__":
    sample_event = {"version": "2.0", "rawPath": "/check-status", "headers": {}}
    print(json.dumps(lambda_handler(sample_event, None)))
