"""Deploy hooks: tell the site's host to rebuild when the tokens it reads have changed
(Netlify's "enabling API Authentication triggers a re-deploy")."""

from __future__ import annotations

import logging
import threading

import httpx

from apiauth.domain.broker import Broker

log = logging.getLogger(__name__)


def fire(broker: Broker, url: str | None, *, site_name: str, reason: str) -> None:
    """POST to the hook in the background: a slow receiver never delays the request."""
    if not url:
        return

    def post() -> None:
        try:
            response = broker.http.post(url, json={"site": site_name, "reason": reason})
            log.info("deploy hook of %s answered HTTP %s", site_name, response.status_code)
        except httpx.HTTPError as exc:
            log.warning("deploy hook of %s failed: %s", site_name, type(exc).__name__)

    threading.Thread(target=post, name=f"deploy-hook-{site_name}", daemon=True).start()
