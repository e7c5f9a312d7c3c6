"""A person at a provider's consent page, played over real HTTP: open the authorize URL
(pressing Continue on apiauth's own page first when the flow was started from the API or the
CLI), read the form, untick what they would untick, press a button, and follow the way
back. The `httpx.Client` is the person's browser: its cookies carry the flow's binding."""

from __future__ import annotations

from collections.abc import Collection
from html.parser import HTMLParser
from urllib.parse import urljoin

import httpx


class _FormReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: list[tuple[str, str]] = []
        self.checkboxes: list[str] = []
        self.buttons: dict[str, tuple[str, str]] = {}
        self._button: tuple[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = values.get("action", "")
        elif tag == "input" and values.get("type") == "hidden":
            self.fields.append((values["name"], values.get("value", "")))
        elif tag == "input" and values.get("type") == "checkbox" and "checked" in values:
            self.checkboxes.append(values["value"])
        elif tag == "button":
            self._button = (values.get("name", ""), values.get("value", ""))

    def handle_data(self, data: str) -> None:
        if self._button is not None and data.strip():
            self.buttons[data.strip()] = self._button
            self._button = None


CONTINUE_PATH = "/oauth/continue/"


def press_continue(http: httpx.Client, continue_url: str) -> httpx.Response:
    """apiauth's Continue page: read it, press Continue; the answer (a 303 to the provider,
    or the page saying why not)."""
    page = http.get(continue_url, headers={"Accept": "text/html"})
    assert page.status_code == 200, page.text
    form = _FormReader()
    form.feed(page.text)
    assert "Continue" in form.buttons, f"no Continue button; found {sorted(form.buttons)}"
    return http.post(str(page.url), data=dict(form.fields))


def provider_url_of(http: httpx.Client, authorize_url: str) -> str:
    """The provider's authorize URL of a flow: behind apiauth's Continue page when the flow
    was started from the API or the CLI (pressing Continue binds it to `http`)."""
    if CONTINUE_PATH not in authorize_url:
        return authorize_url
    answer = press_continue(http, authorize_url)
    assert answer.status_code == 303, answer.text
    return answer.headers["location"]


def consent(
    http: httpx.Client,
    authorize_url: str,
    *,
    button: str = "Authorize",
    untick: Collection[str] = (),
) -> httpx.Response:
    """Returns the response of the redirect URI (apiauth's callback) the provider sent to."""
    page = http.get(provider_url_of(http, authorize_url), headers={"Accept": "text/html"})
    assert page.status_code == 200, page.text
    form = _FormReader()
    form.feed(page.text)
    assert form.action is not None, "no consent form on the page"
    assert button in form.buttons, f"no {button!r} button; found {sorted(form.buttons)}"
    data = list(form.fields)
    data += [("scope", scope) for scope in form.checkboxes if scope not in untick]
    data.append(form.buttons[button])
    body: dict[str, list[str]] = {}
    for name, value in data:
        body.setdefault(name, []).append(value)
    answer = http.post(urljoin(str(page.url), form.action), data=body)
    assert answer.status_code in (302, 303), answer.text
    return http.get(answer.headers["location"], headers={"Accept": "application/json"})


FORM_COOKIE = "apiauth_form"


def press_connect(http: httpx.Client, link: str, provider: str) -> httpx.Response:
    """A visitor presses Connect on a connect link's page: the form carries the page's CSRF
    token (the double-submit cookie the page set). The answer is returned unfollowed."""
    if not http.cookies.get(FORM_COOKIE):
        http.get(link, headers={"Accept": "text/html"})
    token = http.cookies.get(FORM_COOKIE) or ""
    return http.post(link, data={"provider": provider, "csrf_token": token})
