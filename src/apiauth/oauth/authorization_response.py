"""Checks of the authorization response (the redirect back to apiauth) beyond `state`."""

from __future__ import annotations

from apiauth.errors import OAuthFlowError
from apiauth.providers import Provider

__all__ = ["check_issuer"]


def check_issuer(provider: Provider, iss: str | None) -> None:
    """RFC 9207 §2.4, the mix-up defence: a response carrying `iss` must name the issuer the
    flow went to (simple string comparison), and a server that said it sends `iss`
    (`authorization_response_iss_parameter_supported`) must send it. Providers whose issuer
    apiauth does not know (the built-in catalog) are not checked. Applies to error
    responses too."""
    if provider.issuer is None:
        return
    if iss is None:
        if provider.require_iss:
            raise OAuthFlowError(
                f"{provider.display_name} sent the answer back without naming its issuer "
                "(iss, RFC 9207), which it promised to do: refused; start the connection again"
            )
        return
    if iss != provider.issuer:
        shown = "".join(ch if ch.isprintable() else " " for ch in iss)[:200]
        raise OAuthFlowError(
            f"the answer came back from the issuer {shown!r}, but this flow went to "
            f"{provider.issuer}: refused (RFC 9207 mix-up defence); start the connection again"
        )
