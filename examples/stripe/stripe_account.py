"""Act on the Stripe account connected to this site (Stripe Connect), with stripe-python.

    APIAUTH_TOKEN=apiauth_site_… python stripe_account.py

STRIPE_API_URL (default https://api.stripe.com) is the client's `base_addresses["api"]`.
"""

from __future__ import annotations

import os

import stripe

from apiauth import get_secrets

STRIPE_API_URL = os.environ.get("STRIPE_API_URL", "https://api.stripe.com")


def main() -> None:
    connect = get_secrets()["stripe"]
    if not connect.is_logged_in or connect.bearer_token is None:
        raise SystemExit("Stripe needs re-authorization: reconnect it in the apiauth dashboard.")
    # Stripe Connect's OAuth answer names the connected account; apiauth keeps it in `extra`.
    account_id = str(connect.extra["stripe_user_id"])
    # The OAuth access token is a secret key *of the connected account*: every call made with
    # it acts on that account (https://docs.stripe.com/connect/oauth-reference).
    client = stripe.StripeClient(connect.bearer_token, base_addresses={"api": STRIPE_API_URL})
    account = client.v1.accounts.retrieve(account_id)
    name = account.business_profile.name if account.business_profile else None
    print(f"connected account: {account.id} ({name}, {account.country})")
    print(f"charges enabled: {account.charges_enabled}")
    for customer in client.v1.customers.list({"limit": 3}).data:
        print(f"customer {customer.id}\t{customer.name}\t{customer.email}")


if __name__ == "__main__":
    main()
