"""The few provider API endpoints the examples call, answering demo data in each provider's shape.

The OAuth endpoints are the catalog's; these are the calls a site makes *with* the token
(list repositories, query accounts, list playlists ...), so that each provider's own SDK can be
pointed at the emulator and run unchanged. They are not whole APIs: each answers fixed demo
data, with the fields, paging and error bodies of the provider's API reference (linked per
handler), so that the SDKs' parsing meets what it meets in production.

A handler takes an `ApiRequest` and returns an `ApiAnswer`: plain values, no HTTP. `app.py`
routes a request here when no catalog endpoint matches, and answers the provider's 401 unless
the request carries a live access token of that provider, as the who-am-I endpoints do.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from apiauth.emulator.dialects import learned_value

__all__ = ["ApiAnswer", "ApiEndpoint", "ApiRequest", "find_endpoint"]


@dataclass(frozen=True)
class ApiRequest:
    """One API call, already authenticated: what a handler may look at."""

    method: str
    host: str
    path: str
    path_params: Mapping[str, str]
    query: Mapping[str, str]
    headers: Mapping[str, str]
    scopes: tuple[str, ...]
    #: Where the emulator serves this host, e.g. `<emulator>/github/api.github.com`; links in
    #: answers point under it, as GitHub Enterprise's point at its own host.
    host_url: str
    #: The user a service account's token acts as by domain-wide delegation, or None.
    subject: str | None = None


@dataclass(frozen=True)
class ApiAnswer:
    body: Any
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[ApiRequest], ApiAnswer]


@dataclass(frozen=True)
class ApiEndpoint:
    provider: str
    method: str
    #: The API's host; None for Salesforce, whose host is the org's `instance_url`.
    host: str | None
    #: As in the provider's reference, `{name}` for a path parameter: `/v1/accounts/{account}`.
    path: str
    pattern: re.Pattern[str]
    handler: Handler


def _int_param(query: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    try:
        value = int(query.get(name, default))
    except ValueError:
        return default
    return max(low, min(high, value))


# --------------------------------------------------------------------------- GitHub
# https://docs.github.com/en/rest/repos/repos#list-repositories-for-the-authenticated-user

_GITHUB_REPOS = (
    ("Hello-World", 1296269, False, "My first repository on GitHub!", "Python", 80, "2011-01-26"),
    (
        "Spoon-Knife",
        1300192,
        False,
        "This repo is for demonstration purposes only.",
        "HTML",
        12,
        "2011-01-27",
    ),
    ("octocat.github.io", 17881631, False, "The Octocat's home page", "CSS", 3, "2014-02-20"),
    ("linguist", 8441921, False, "Language savant", "Ruby", 9, "2013-03-05"),
    ("secret-plans", 45678901, True, "Plans for world domination", None, 0, "2015-11-02"),
)


def _github_owner(api: str) -> dict[str, Any]:
    return {
        "login": "octocat",
        "id": 583231,
        "node_id": "MDQ6VXNlcjU4MzIzMQ==",
        "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4",
        "url": f"{api}/users/octocat",
        "html_url": "https://github.com/octocat",
        "type": "User",
        "site_admin": False,
    }


def _github_repo(
    api: str, repo: tuple[str, int, bool, str, str | None, int, str]
) -> dict[str, Any]:
    name, repo_id, private, description, language, stars, created = repo
    return {
        "id": repo_id,
        "node_id": f"MDEwOlJlcG9zaXRvcnk{repo_id}",
        "name": name,
        "full_name": f"octocat/{name}",
        "owner": _github_owner(api),
        "private": private,
        "html_url": f"https://github.com/octocat/{name}",
        "description": description,
        "fork": False,
        "url": f"{api}/repos/octocat/{name}",
        "language": language,
        "stargazers_count": stars,
        "watchers_count": stars,
        "forks_count": stars // 4,
        "open_issues_count": 0,
        "default_branch": "main",
        "visibility": "private" if private else "public",
        "created_at": f"{created}T19:01:12Z",
        "updated_at": "2025-01-02T10:00:00Z",
        "pushed_at": "2025-01-02T10:00:00Z",
        "permissions": {
            "admin": True,
            "maintain": True,
            "push": True,
            "triage": True,
            "pull": True,
        },
    }


def github_list_repos(request: ApiRequest) -> ApiAnswer:
    # Private repositories need the `repo` scope; `public_repo` or none lists public ones.
    repos = [r for r in _GITHUB_REPOS if "repo" in request.scopes or not r[2]]
    visibility = request.query.get("visibility", "all")
    if visibility in ("public", "private"):
        repos = [r for r in repos if r[2] == (visibility == "private")]
    per_page = _int_param(request.query, "per_page", 30, low=1, high=100)
    page = _int_param(request.query, "page", 1, low=1, high=10_000)
    chunk = repos[(page - 1) * per_page : page * per_page]
    headers = {"X-OAuth-Scopes": ", ".join(request.scopes)}
    last = max(1, -(-len(repos) // per_page))
    if page < last:
        # GitHub pages with a Link header:
        # https://docs.github.com/en/rest/using-the-rest-api/using-pagination-in-the-rest-api
        def link(number: int) -> str:
            query = urlencode({**request.query, "per_page": per_page, "page": number})
            return f"<{request.host_url}{request.path}?{query}>"

        headers["Link"] = f'{link(page + 1)}; rel="next", {link(last)}; rel="last"'
    return ApiAnswer([_github_repo(request.host_url, r) for r in chunk], headers=headers)


# --------------------------------------------------------------------------- Salesforce
# https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_query.htm

_SALESFORCE_ACCOUNTS = (
    {"Id": "0015g00000EmuAAAA1", "Name": "Edge Communications", "Industry": "Electronics"},
    {"Id": "0015g00000EmuAAAA2", "Name": "Burlington Textiles Corp", "Industry": "Apparel"},
    {"Id": "0015g00000EmuAAAA3", "Name": "Pyramid Construction Inc.", "Industry": "Construction"},
    {"Id": "0015g00000EmuAAAA4", "Name": "Grand Hotels & Resorts Ltd", "Industry": "Hospitality"},
)
_SOQL = re.compile(
    r"\s*SELECT\s+(?P<fields>[\w\s,]+?)\s+FROM\s+(?P<object>\w+)"
    r"(?:\s+ORDER\s+BY\s+(?P<order>\w+)(?:\s+(?P<direction>ASC|DESC))?)?"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?\s*",
    re.IGNORECASE,
)


def _salesforce_error(message: str, code: str, status: int = 400) -> ApiAnswer:
    return ApiAnswer([{"message": message, "errorCode": code}], status)


def salesforce_query(request: ApiRequest) -> ApiAnswer:
    # Only what the demo org holds: `SELECT <fields> FROM Account [ORDER BY f] [LIMIT n]`.
    soql = request.query.get("q", "")
    match = _SOQL.fullmatch(soql)
    if match is None:
        return _salesforce_error(
            "The emulated org understands only SELECT <fields> FROM Account "
            "[ORDER BY <field> [ASC|DESC]] [LIMIT n].",
            "MALFORMED_QUERY",
        )
    if match["object"].lower() != "account":
        return _salesforce_error(
            f"sObject type '{match['object']}' is not supported.", "INVALID_TYPE"
        )
    columns = {name.lower(): name for name in _SALESFORCE_ACCOUNTS[0]}
    fields = [f.strip() for f in match["fields"].split(",") if f.strip()]
    for name in [*fields, match["order"] or "Id"]:
        if name.lower() not in columns:
            return _salesforce_error(
                f"No such column '{name}' on entity 'Account'.", "INVALID_FIELD"
            )
    rows = list(_SALESFORCE_ACCOUNTS)
    if match["order"]:
        key = columns[match["order"].lower()]
        rows.sort(key=lambda row: row[key], reverse=(match["direction"] or "").upper() == "DESC")
    if match["limit"] is not None:
        rows = rows[: int(match["limit"])]
    version = request.path_params["version"]
    records = [
        {
            "attributes": {
                "type": "Account",
                "url": f"/services/data/v{version}/sobjects/Account/{row['Id']}",
            },
            **{columns[f.lower()]: row[columns[f.lower()]] for f in fields},
        }
        for row in rows
    ]
    return ApiAnswer({"totalSize": len(records), "done": True, "records": records})


# --------------------------------------------------------------------------- Spotify
# https://developer.spotify.com/documentation/web-api/reference/get-a-list-of-current-users-playlists

_SPOTIFY_PLAYLISTS = (
    ("37i9dQZF1DXcBWIGoYBM5M", "Today's Top Hits", "The hottest 50.", 50),
    ("3cEYpjA9oz9GiPac4AsH4n", "Deep Focus", "Keep calm and focus.", 120),
    ("1h0CEZCm6IbFTbxThn6Xcs", "Road Trip", "Songs for the open road.", 34),
)


def spotify_my_playlists(request: ApiRequest) -> ApiAnswer:
    limit = _int_param(request.query, "limit", 20, low=1, high=50)
    offset = _int_param(request.query, "offset", 0, low=0, high=100_000)
    base = f"{request.host_url}/v1/me/playlists"
    owner = {
        "display_name": "Demo Listener",
        "external_urls": {"spotify": "https://open.spotify.com/user/emulated-listener"},
        "href": f"{request.host_url}/v1/users/emulated-listener",
        "id": "emulated-listener",
        "type": "user",
        "uri": "spotify:user:emulated-listener",
    }
    items = [
        {
            "collaborative": False,
            "description": description,
            "external_urls": {"spotify": f"https://open.spotify.com/playlist/{pid}"},
            "href": f"{request.host_url}/v1/playlists/{pid}",
            "id": pid,
            "images": [],
            "name": name,
            "owner": owner,
            "public": True,
            "snapshot_id": "MTYsMWNkNjc4ZDk0ZmQ3ZDNmMTk0NmE4MzM0Y2JjNzAwMjk1MmJkMDNjMQ==",
            "tracks": {"href": f"{request.host_url}/v1/playlists/{pid}/tracks", "total": tracks},
            "type": "playlist",
            "uri": f"spotify:playlist:{pid}",
        }
        for pid, name, description, tracks in _SPOTIFY_PLAYLISTS
    ]
    total = len(items)

    def page(at: int) -> str:
        return f"{base}?{urlencode({'offset': at, 'limit': limit})}"

    return ApiAnswer(
        {
            "href": page(offset),
            "limit": limit,
            "next": page(offset + limit) if offset + limit < total else None,
            "offset": offset,
            "previous": page(max(0, offset - limit)) if offset > 0 else None,
            "total": total,
            "items": items[offset : offset + limit],
        }
    )


# --------------------------------------------------------------------------- Stripe
# https://docs.stripe.com/api/accounts/retrieve, https://docs.stripe.com/api/customers/list,
# https://docs.stripe.com/connect/authentication (the Stripe-Account header)

STRIPE_ACCOUNT_ID = "acct_1EmuLat0rDemo42"  # the account the emulated OAuth flow connects

_STRIPE_CUSTOMERS = (
    ("cus_NffrFeUfNV2Hib", "Jenny Rosen", "jennyrosen@example.com", 1680893993),
    ("cus_NffrFeUfNV2Hic", "Jack Smith", "jack.smith@example.com", 1680894012),
    ("cus_NffrFeUfNV2Hid", "Ana Silva", "ana.silva@example.com", 1680894120),
)


def _stripe_no_access(account: str) -> ApiAnswer:
    return ApiAnswer(
        {
            "error": {
                "code": "account_invalid",
                "doc_url": "https://stripe.com/docs/error-codes/account-invalid",
                "message": f"The provided key does not have access to account '{account}' "
                "(or that account does not exist). Application access may have been revoked.",
                "type": "invalid_request_error",
            }
        },
        403,
    )


def _stripe_acting_as(request: ApiRequest) -> ApiAnswer | None:
    """The 403 Stripe gives when `Stripe-Account` names an account the key cannot act on."""
    account = request.headers.get("stripe-account")
    if account is not None and account != STRIPE_ACCOUNT_ID:
        return _stripe_no_access(account)
    return None


def stripe_retrieve_account(request: ApiRequest) -> ApiAnswer:
    refused = _stripe_acting_as(request)
    if refused is not None:
        return refused
    account = request.path_params["account"]
    if account != STRIPE_ACCOUNT_ID:
        return _stripe_no_access(account)
    return ApiAnswer(
        {
            "id": STRIPE_ACCOUNT_ID,
            "object": "account",
            "business_profile": {"name": "Demo Shop", "url": "https://shop.example.com"},
            "business_type": "company",
            "capabilities": {"card_payments": "active", "transfers": "active"},
            "charges_enabled": True,
            "country": "US",
            "created": 1680893000,
            "default_currency": "usd",
            "details_submitted": True,
            "email": "merchant@example.com",
            "payouts_enabled": True,
            "type": "standard",
        }
    )


def stripe_list_customers(request: ApiRequest) -> ApiAnswer:
    refused = _stripe_acting_as(request)
    if refused is not None:
        return refused
    limit = _int_param(request.query, "limit", 10, low=1, high=100)
    customers = [
        {
            "id": cid,
            "object": "customer",
            "balance": 0,
            "created": created,
            "currency": "usd",
            "delinquent": False,
            "email": email,
            "livemode": False,
            "metadata": {},
            "name": name,
        }
        for cid, name, email, created in _STRIPE_CUSTOMERS
    ]
    return ApiAnswer(
        {
            "object": "list",
            "url": "/v1/customers",
            "has_more": limit < len(customers),
            "data": customers[:limit],
        }
    )


# --------------------------------------------------------------------------- Box
# https://developer.box.com/reference/get-folders-id-items/

_BOX_ITEMS = (
    ("folder", "11446500", "Contracts"),
    ("folder", "11446501", "Photos"),
    ("file", "12345678", "Quarterly report.pdf"),
    ("file", "12345679", "Budget 2025.xlsx"),
)


def box_folder_items(request: ApiRequest) -> ApiAnswer:
    if request.path_params["folder"] != "0":
        # The demo account has its root folder (id "0") and nothing readable beyond it.
        return ApiAnswer(
            {
                "type": "error",
                "status": 404,
                "code": "not_found",
                "message": "Not Found",
                "request_id": "emu1a2b3c4d5e6f",
                "help_url": "http://developers.box.com/docs/#errors",
            },
            404,
        )
    limit = _int_param(request.query, "limit", 100, low=1, high=1000)
    offset = _int_param(request.query, "offset", 0, low=0, high=100_000)
    entries: list[dict[str, Any]] = []
    for kind, item_id, name in _BOX_ITEMS:
        entry: dict[str, Any] = {
            "type": kind,
            "id": item_id,
            "sequence_id": "3",
            "etag": "3",
            "name": name,
        }
        if kind == "file":
            entry["sha1"] = "85136c79cbf9fe36bb9d05d0639c70c265c18d37"
            entry["file_version"] = {"type": "file_version", "id": f"{item_id}0"}
        entries.append(entry)
    return ApiAnswer(
        {
            "total_count": len(entries),
            "entries": entries[offset : offset + limit],
            "offset": offset,
            "limit": limit,
            "order": [{"by": "type", "direction": "ASC"}, {"by": "name", "direction": "ASC"}],
        }
    )


# --------------------------------------------------------------------------- Contentful
# https://www.contentful.com/developers/docs/references/content-management-api/#/reference/spaces
# https://www.contentful.com/developers/docs/references/content-management-api/#/reference/entries

CONTENTFUL_SPACE_ID = "yadj1kx9rmg0"
_CONTENTFUL_USER = "4FLrUHftHW3v2BLi9fzfjU"
_CONTENTFUL_ENTRIES = (
    ("5KsDBWseXY6QegucYAoacS", "Hello, Contentful", "hello-contentful"),
    ("6dbjWqNd9SqccegcqYq224", "Building with apiauth", "building-with-apiauth"),
)


def _contentful_link(link_type: str, link_id: str) -> dict[str, Any]:
    return {"sys": {"type": "Link", "linkType": link_type, "id": link_id}}


def _contentful_array(items: list[dict[str, Any]], query: Mapping[str, str]) -> ApiAnswer:
    skip = _int_param(query, "skip", 0, low=0, high=100_000)
    limit = _int_param(query, "limit", 100, low=1, high=1000)
    return ApiAnswer(
        {
            "sys": {"type": "Array"},
            "total": len(items),
            "skip": skip,
            "limit": limit,
            "items": items[skip : skip + limit],
        }
    )


def _contentful_not_found(what: str) -> ApiAnswer:
    return ApiAnswer(
        {
            "sys": {"type": "Error", "id": "NotFound"},
            "message": f"The resource could not be found: {what}.",
            "requestId": "emu-00000000",
        },
        404,
    )


def contentful_spaces(request: ApiRequest) -> ApiAnswer:
    space = {
        "sys": {
            "type": "Space",
            "id": CONTENTFUL_SPACE_ID,
            "version": 3,
            "createdAt": "2024-03-01T09:00:00Z",
            "updatedAt": "2025-01-02T10:00:00Z",
            "createdBy": _contentful_link("User", _CONTENTFUL_USER),
            "updatedBy": _contentful_link("User", _CONTENTFUL_USER),
            "organization": _contentful_link("Organization", "1PLOOEmTI2S1NYald4FNhQ"),
        },
        "name": "Demo Blog",
    }
    return _contentful_array([space], request.query)


def contentful_entries(request: ApiRequest) -> ApiAnswer:
    space, environment = request.path_params["space"], request.path_params["environment"]
    if space != CONTENTFUL_SPACE_ID or environment != "master":
        return _contentful_not_found(f"environment {environment!r} of space {space!r}")
    entries = [
        {
            "sys": {
                "type": "Entry",
                "id": entry_id,
                "space": _contentful_link("Space", CONTENTFUL_SPACE_ID),
                "environment": _contentful_link("Environment", "master"),
                "contentType": _contentful_link("ContentType", "blogPost"),
                "version": 4,
                "publishedVersion": 3,
                "publishedCounter": 1,
                "createdAt": "2024-03-02T09:00:00Z",
                "updatedAt": "2025-01-02T10:00:00Z",
                "publishedAt": "2025-01-02T10:00:00Z",
                "createdBy": _contentful_link("User", _CONTENTFUL_USER),
                "updatedBy": _contentful_link("User", _CONTENTFUL_USER),
            },
            "fields": {"title": {"en-US": title}, "slug": {"en-US": slug}},
        }
        for entry_id, title, slug in _CONTENTFUL_ENTRIES
    ]
    return _contentful_array(entries, request.query)


# --------------------------------------------------------------------------- Mailchimp
# https://mailchimp.com/developer/marketing/api/ping/: the health check, at the account's
# data centre (`https://{dc}.api.mailchimp.com/3.0/ping`). Another data centre's host does
# not know the account.


def mailchimp_ping(request: ApiRequest) -> ApiAnswer:
    if request.host != f"{learned_value('dc')}.api.mailchimp.com":
        return ApiAnswer(
            {"title": "Wrong Datacenter", "status": 403, "detail": "Use your account's dc."},
            403,
        )
    return ApiAnswer({"health_status": "Everything's Chimpy!"})


def github_installation_repos(request: ApiRequest) -> ApiAnswer:
    # https://docs.github.com/en/rest/apps/installations#list-repositories-accessible-to-the-app-installation
    # An installation token's call; the emulated installation can read every demo repo.
    per_page = _int_param(request.query, "per_page", 30, low=1, high=100)
    page = _int_param(request.query, "page", 1, low=1, high=10_000)
    chunk = _GITHUB_REPOS[(page - 1) * per_page : page * per_page]
    return ApiAnswer(
        {
            "total_count": len(_GITHUB_REPOS),
            "repository_selection": "all",
            "repositories": [_github_repo(request.host_url, r) for r in chunk],
        }
    )


# --------------------------------------------------------------------------- Google
# Gmail's users.getProfile, as a service account's token calls it:
# https://developers.google.com/gmail/api/reference/rest/v1/users/getProfile (`userId` is
# the user's address or `me`; the answer's fields emailAddress, messagesTotal, threadsTotal,
# historyId (a string); one of the Gmail scopes below). The reference names the host
# gmail.googleapis.com; the catalog's api_base_url is www.googleapis.com, which serves the
# same /gmail/v1 paths (not verified in Google's docs). Error bodies have the `code`,
# `message` and `errors` list of https://developers.google.com/gmail/api/guides/handle-errors
# and the `status` of https://cloud.google.com/apis/design/errors. Not verified in Google's
# docs, only as clients report them: the 400 "Precondition check failed." /
# `failedPrecondition` for a token of an account acting as itself (it has no mailbox), the
# 403 "Delegation denied for <user>" for another user's `userId`, and the 403
# `insufficientPermissions` words for a token without a Gmail scope.

_GMAIL_SCOPES = frozenset(
    {
        "https://mail.google.com/",
        "https://www.googleapis.com/auth/gmail.modify",
        "https://www.googleapis.com/auth/gmail.compose",
        "https://www.googleapis.com/auth/gmail.readonly",
        "https://www.googleapis.com/auth/gmail.metadata",
    }
)


def _google_error(code: int, status: str, reason: str, message: str) -> ApiAnswer:
    body = {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
            "status": status,
        }
    }
    return ApiAnswer(body, code)


def gmail_get_profile(request: ApiRequest) -> ApiAnswer:
    if not _GMAIL_SCOPES.intersection(request.scopes):
        return _google_error(
            403,
            "PERMISSION_DENIED",
            "insufficientPermissions",
            "Request had insufficient authentication scopes.",
        )
    if request.subject is None:
        return _google_error(
            400, "FAILED_PRECONDITION", "failedPrecondition", "Precondition check failed."
        )
    user = request.path_params["user"]
    if user != "me" and user.lower() != request.subject.lower():
        return _google_error(
            403, "PERMISSION_DENIED", "forbidden", f"Delegation denied for {request.subject}"
        )
    return ApiAnswer(
        {
            "emailAddress": request.subject,
            "messagesTotal": 1289,
            "threadsTotal": 774,
            "historyId": "8126471",
        }
    )


# --------------------------------------------------------------------------- routing


def _endpoint(
    provider: str, method: str, host: str | None, path: str, handler: Handler
) -> ApiEndpoint:
    regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path.strip("/")))
    return ApiEndpoint(provider, method, host, path, re.compile(regex), handler)


ENDPOINTS = (
    _endpoint("github", "GET", "api.github.com", "/user/repos", github_list_repos),
    _endpoint("github-app-user", "GET", "api.github.com", "/user/repos", github_list_repos),
    _endpoint(
        "github-app",
        "GET",
        "api.github.com",
        "/installation/repositories",
        github_installation_repos,
    ),
    _endpoint("salesforce", "GET", None, "/services/data/v{version}/query", salesforce_query),
    _endpoint("spotify", "GET", "api.spotify.com", "/v1/me/playlists", spotify_my_playlists),
    _endpoint("stripe", "GET", "api.stripe.com", "/v1/accounts/{account}", stripe_retrieve_account),
    _endpoint("stripe", "GET", "api.stripe.com", "/v1/customers", stripe_list_customers),
    _endpoint("box", "GET", "api.box.com", "/2.0/folders/{folder}/items", box_folder_items),
    _endpoint("contentful", "GET", "api.contentful.com", "/spaces", contentful_spaces),
    _endpoint("mailchimp", "GET", None, "/3.0/ping", mailchimp_ping),
    _endpoint(
        "google-service-account",
        "GET",
        "www.googleapis.com",
        "/gmail/v1/users/{user}/profile",
        gmail_get_profile,
    ),
    _endpoint(
        "contentful",
        "GET",
        "api.contentful.com",
        "/spaces/{space}/environments/{environment}/entries",
        contentful_entries,
    ),
)


def find_endpoint(
    provider: str, method: str, host: str, path: str
) -> tuple[ApiEndpoint, dict[str, str]] | None:
    """The endpoint serving `method host/path` of `provider`, with its path parameters."""
    for endpoint in ENDPOINTS:
        if endpoint.provider != provider or endpoint.method != method:
            continue
        if endpoint.host is not None and endpoint.host != host:
            continue
        match = endpoint.pattern.fullmatch(path.strip("/"))
        if match is not None:
            return endpoint, match.groupdict()
    return None
