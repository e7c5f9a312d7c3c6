"""The peers' fixtures, for the tests in this directory (others import them from `harness`)."""

from tests.peers.harness import oauth2_mock_peer, oidc_peer

__all__ = ["oauth2_mock_peer", "oidc_peer"]
