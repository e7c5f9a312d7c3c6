"""The provider catalog: built-in facts, custom files, and the errors a mistake produces."""

from __future__ import annotations

from pathlib import Path

import pytest

from apiauth.providers import Catalog, CatalogError, Provider, emulated_url, load_catalog

pytestmark = pytest.mark.fast

ACME = """
[providers.acme]
display_name = "Acme"
authorization_url = "https://auth.acme.example/authorize"
token_url = "https://auth.acme.example/token"
token_auth_method = "client_secret_post"   # or "client_secret_basic", "none" (RFC 7591 names)
pkce = true
scope_separator = " "
scopes = [
  { name = "read", description = "Read your data", default = true },
  { name = "write", description = "Change your data" },
]
userinfo_url = "https://api.acme.example/me"     # optional: checks the token, names the account
revoke_url = "https://auth.acme.example/revoke"  # optional
keep_response_fields = ["instance_url"]           # optional: copied into `extra`
account_id_field = "sub"                          # optional: default "sub", then "id"
account_login_field = "preferred_username"        # optional
client_id = "acme-client"                         # optional here: APIAUTH_ACME_CLIENT_ID
client_secret = "acme-very-secret"                # optional here: APIAUTH_ACME_CLIENT_SECRET
"""

MINIMAL = """
[providers.{name}]
display_name = "Acme"
authorization_url = "https://auth.acme.example/authorize"
token_url = "https://auth.acme.example/token"
token_auth_method = "client_secret_post"
{extra}
"""


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "providers.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_builtin_providers_load_in_order(catalog: Catalog) -> None:
    first_six = ["github", "salesforce", "spotify", "stripe", "box", "contentful"]
    assert catalog.names()[:6] == first_six
    assert len(catalog) >= 30
    assert all(p.builtin for p in catalog.values())
    assert all(catalog[name].default_scopes for name in first_six)
    assert all(p.docs_url and p.app_registration_url for p in catalog.values())
    with pytest.raises(KeyError):
        catalog["nope"]


def test_builtin_urls_are_the_real_production_ones(catalog: Catalog) -> None:
    urls = {name: (p.authorization_url, p.token_url) for name, p in list(catalog.items())[:6]}
    assert urls == {
        "github": (
            "https://github.com/login/oauth/authorize",
            "https://github.com/login/oauth/access_token",
        ),
        "salesforce": (
            "https://{login_host}/services/oauth2/authorize",
            "https://{login_host}/services/oauth2/token",
        ),
        "spotify": (
            "https://accounts.spotify.com/authorize",
            "https://accounts.spotify.com/api/token",
        ),
        "stripe": (
            "https://connect.stripe.com/oauth/authorize",
            "https://connect.stripe.com/oauth/token",
        ),
        "box": ("https://account.box.com/api/oauth2/authorize", "https://api.box.com/oauth2/token"),
        "contentful": (
            "https://be.contentful.com/oauth/authorize",
            "https://be.contentful.com/oauth/token",
        ),
    }
    assert catalog["box"].userinfo_url == "https://api.box.com/2.0/users/me"
    assert catalog["stripe"].revoke_url == "https://connect.stripe.com/oauth/deauthorize"


def test_github_facts(catalog: Catalog) -> None:
    github = catalog["github"]
    assert github.token_auth_method == "client_secret_post"
    assert github.granted_scope_separator == ","
    assert github.default_scopes == ("read:user",)
    expected = {"repo", "read:user", "user:email", "public_repo", "gist", "read:org", "workflow"}
    assert expected <= set(github.scope_names())
    assert github.refresh_token == "none"
    assert github.access_token_lifetime is None
    assert github.revoke_style == "github"
    assert github.revoke_url == "https://api.github.com/applications/{client_id}/token"


def test_salesforce_facts(catalog: Catalog) -> None:
    salesforce = catalog["salesforce"]
    assert dict(salesforce.authorize_params) == {"prompt": "consent"}
    assert "instance_url" in salesforce.keep_response_fields
    assert salesforce.userinfo_url == "{instance_url}/services/oauth2/userinfo"
    assert salesforce.default_scopes == ("api", "refresh_token")
    assert salesforce.refresh_token == "reusable"
    assert salesforce.access_token_lifetime is None
    # Without a login_host, Salesforce's URLs are the production ones, as they always were.
    values = salesforce.url_values({})
    assert values == {"login_host": "login.salesforce.com"}


def test_spotify_stripe_box_contentful_facts(catalog: Catalog) -> None:
    spotify, stripe, box, contentful = (
        catalog[n] for n in ("spotify", "stripe", "box", "contentful")
    )
    assert spotify.token_auth_method == "client_secret_basic"
    assert (spotify.access_token_lifetime, spotify.refresh_token) == (3600, "may_rotate")
    assert spotify.revoke_url is None
    assert stripe.default_scopes == ("read_write",)
    assert stripe.keep_response_fields == ("stripe_user_id", "stripe_publishable_key")
    assert (stripe.revoke_style, stripe.refresh_token) == ("stripe", "reusable")
    assert (box.access_token_lifetime, box.refresh_token) == (3600, "rotating")
    assert box.default_scopes == ("root_readwrite",)
    assert contentful.default_scopes == ("content_management_manage",)
    assert (contentful.refresh_token, contentful.account_id_field) == ("none", "sys.id")


def test_a_custom_file_adds_providers_beside_the_builtins(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, ACME))
    assert catalog.names()[-1] == "acme"
    assert len(catalog) == len(load_catalog()) + 1
    acme = catalog["acme"]
    assert not acme.builtin
    assert acme.pkce
    assert acme.default_scopes == ("read",)
    assert acme.granted_scope_separator == " "
    assert acme.revoke_style == "rfc7009"
    assert acme.refresh_token == "reusable"
    assert (acme.client_id, acme.client_secret) == ("acme-client", "acme-very-secret")


def test_the_client_secret_never_shows_in_repr(tmp_path: Path) -> None:
    acme = load_catalog(write(tmp_path, ACME))["acme"]
    assert "acme-very-secret" not in repr(acme)
    assert "acme-very-secret" not in str(acme)


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ('token_url = "ftp://auth.acme.example/token"', "token_url", "must be an http(s) URL"),
        ('token_auth_method = "client_secret_jwt"', "token_auth_method", "must be one of"),
        ('tokn_url = "https://x.example/t"', "tokn_url", "unknown field"),
        ('pkce = "yes"', "pkce", "must be true or false"),
        ('scopes = [{ name = "" }]', "scopes[0].name", "non-empty"),
        ('scopes = [{ name = "a" }, { name = "a" }]', "scopes[1].name", "listed twice"),
        ('scopes = [{ name = "a", defualt = true }]', "scopes[0].defualt", "unknown field"),
        ('userinfo_url = "{tenant}/me"', "userinfo_url", "unknown placeholder {tenant}"),
        ('docs_url = "{instance_url}/docs"', "docs_url", "unknown placeholder"),
        ("access_token_lifetime = -5", "access_token_lifetime", "positive"),
        ('refresh_token = "sometimes"', "refresh_token", "must be one of"),
        ('revoke_style = "soap"', "revoke_style", "must be one of"),
        ('authorize_params = { state = "x" }', "authorize_params.state", "set by apiauth"),
        ("keep_response_fields = [1]", "keep_response_fields", "list of non-empty strings"),
    ],
)
def test_each_mistake_names_the_file_the_provider_and_the_field(
    tmp_path: Path, extra: str, field: str, message: str
) -> None:
    text = MINIMAL.format(name="acme", extra=extra)
    if extra.startswith(("token_url", "token_auth_method")):
        # Replace the valid line rather than adding a duplicate key.
        key = extra.split(" ", 1)[0]
        text = "\n".join(line for line in text.splitlines() if not line.startswith(key + " "))
        text += "\n" + extra + "\n"
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    error = str(caught.value)
    assert error.startswith(f"{path}: provider 'acme': field '{field}': "), error
    assert message in error


def test_a_missing_required_field_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, '[providers.acme]\ndisplay_name = "Acme"\n')
    with pytest.raises(
        CatalogError, match=r"provider 'acme': field 'authorization_url': is required"
    ):
        load_catalog(path)


def test_a_bad_provider_name_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.format(name='"Acme Corp"', extra=""))
    with pytest.raises(CatalogError, match=r"provider 'Acme Corp': field 'name'"):
        load_catalog(path)


def test_a_custom_provider_may_not_reuse_a_builtin_name(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.format(name="github", extra=""))
    with pytest.raises(CatalogError, match=r"provider 'github': field 'name': is a built-in"):
        load_catalog(path)


def test_a_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[providers.acme]\ndisplay_name = "Acme"\ntoken_url = https://x\n')
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(caught.value).startswith(f"{path}: invalid TOML")
    assert "line 3" in str(caught.value)


def test_a_missing_file_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "absent.toml")


def test_emulated_url_moves_host_and_path_under_the_emulator() -> None:
    emulator = "http://127.0.0.1:8000/_emulator/"
    assert (
        emulated_url("https://github.com/login/oauth/authorize", "github", emulator)
        == "http://127.0.0.1:8000/_emulator/github/github.com/login/oauth/authorize"
    )
    assert (
        emulated_url("https://auth.acme.example/authorize?audience=api", "acme", emulator)
        == "http://127.0.0.1:8000/_emulator/acme/auth.acme.example/authorize?audience=api"
    )
    template = "{instance_url}/services/oauth2/userinfo"
    assert emulated_url(template, "salesforce", emulator) == template


def test_load_catalog_with_an_emulator_moves_every_endpoint(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, ACME), emulator_url="http://emu.test/_emulator")
    github = catalog["github"]
    assert (
        github.token_url == "http://emu.test/_emulator/github/github.com/login/oauth/access_token"
    )
    assert github.revoke_url == (
        "http://emu.test/_emulator/github/api.github.com/applications/{client_id}/token"
    )
    assert github.api_base_url == "http://emu.test/_emulator/github/api.github.com"
    assert catalog["salesforce"].userinfo_url == "{instance_url}/services/oauth2/userinfo"
    # A custom provider is called where its URLs point (SPEC §4) unless it asks for the
    # emulator.
    assert catalog["acme"].userinfo_url == "https://api.acme.example/me"
    emulated = load_catalog(
        write(tmp_path, ACME + "emulate = true\n"), emulator_url="http://emu.test/_emulator"
    )
    assert emulated["acme"].userinfo_url == "http://emu.test/_emulator/acme/api.acme.example/me"
    # Pages meant for people stay where they are.
    assert github.docs_url is not None
    assert github.docs_url.startswith("https://docs.github.com/")


def test_parse_granted_scopes(catalog: Catalog) -> None:
    github, box, spotify = catalog["github"], catalog["box"], catalog["spotify"]
    assert github.parse_granted_scopes("repo,read:user", ["repo"]) == ("repo", "read:user")
    assert github.parse_granted_scopes("repo, gist,", ["repo"]) == ("repo", "gist")
    assert github.parse_granted_scopes("", ["repo"]) == ()
    assert box.parse_granted_scopes(None, ["root_readwrite"]) == ("root_readwrite",)
    assert spotify.parse_granted_scopes("user-read-email  user-top-read", []) == (
        "user-read-email",
        "user-top-read",
    )


def test_account_from_userinfo_follows_dotted_paths_and_defaults(
    catalog: Catalog, tmp_path: Path
) -> None:
    contentful = catalog["contentful"]
    body = {"sys": {"id": "4FLr", "type": "User"}, "email": "ed@example.com"}
    assert contentful.account_from_userinfo(body) == ("4FLr", "ed@example.com")
    assert catalog["github"].account_from_userinfo({"id": 583231, "login": "octocat"}) == (
        "583231",
        "octocat",
    )
    assert catalog["box"].account_from_userinfo({"type": "user"}) == (None, None)

    plain: Provider = load_catalog(write(tmp_path, MINIMAL.format(name="plain", extra="")))["plain"]
    assert plain.account_from_userinfo({"id": 7, "email": "a@b.example"}) == ("7", "a@b.example")
    assert plain.account_from_userinfo({"sub": "s", "id": 7, "login": "me"}) == ("s", "me")
