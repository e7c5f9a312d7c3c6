"""MkDocs hooks: the reference pages, generated from the code at every build.

The configuration reference comes from `apiauth.config.Settings` (its fields and their
descriptions), the CLI reference from the Typer app, the REST reference from the FastAPI
app's OpenAPI document, and the provider facts from the catalog, so none of them can drift
from what apiauth does. Nothing is written into `docs/`: the pages are added to the build as
generated files. `docs/SECURITY.md` (the security model) becomes the Security page.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import typer.main
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page
from pydantic.fields import FieldInfo

from apiauth.cli.commands import app as cli_app
from apiauth.client import DEFAULT_URL
from apiauth.config import Settings
from apiauth.domain.broker import open_broker
from apiauth.providers import Provider, load_catalog
from apiauth.server.app import create_app

log = logging.getLogger("mkdocs.hooks.reference")

SECURITY_SOURCE = "SECURITY.md"
SECURITY_PAGE = "security.md"
CATALOG_MARKER = re.compile(r"<!-- catalog:(?P<name>[a-z0-9_-]+) -->")


def _cell(text: object) -> str:
    """Text fit for one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- configuration


def _type_name(info: FieldInfo) -> str:
    text = str(info.annotation)
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)
    return text.replace("pathlib.", "").replace("typing.", "")


def _default(info: FieldInfo) -> str:
    if info.default is None:
        return "none"
    return f"`{info.default}`"


def configuration_reference() -> str:
    rows = []
    for name, info in Settings.model_fields.items():
        if not info.description:
            log.warning("config.py: Settings.%s has no description for the reference", name)
        rows.append(
            (f"`APIAUTH_{name.upper()}`", _type_name(info), _default(info), info.description or "")
        )
    providers = sorted(load_catalog())
    provider_rows = [
        (
            f"`APIAUTH_{name.upper().replace('-', '_')}_CLIENT_ID`, "
            f"`APIAUTH_{name.upper().replace('-', '_')}_CLIENT_SECRET`",
            f"the OAuth app registered with {load_catalog()[name].display_name}",
        )
        for name in providers
    ]
    return "\n".join(
        [
            "# Configuration reference\n",
            "Generated from `apiauth.config.Settings` at every documentation build. Every",
            "setting is an environment variable; `apiauth serve` and every command read them",
            "once at start.\n",
            "## Server\n",
            _table(["variable", "type", "default", "meaning"], rows),
            "## OAuth apps from the environment\n",
            "A server-wide OAuth app per provider (`-` in provider names becomes `_`); a team",
            "can register its own instead (`apiauth apps set`, or the dashboard's **OAuth",
            "apps** page). Custom providers from `APIAUTH_PROVIDERS_FILE` take the same",
            "variables.\n",
            _table(["variables", "what"], provider_rows),
            "## Builds and functions\n",
            "What the client library (`import apiauth`) and `apiauth secrets` / `apiauth run`",
            "read; they need nothing else.\n",
            _table(
                ["variable", "default", "meaning"],
                [
                    (
                        "`APIAUTH_TOKEN`",
                        "none",
                        "the site token or a function token the client sends to the broker",
                    ),
                    ("`APIAUTH_URL`", f"`{DEFAULT_URL}`", "where the client finds the broker"),
                ],
            ),
            "## Tests\n",
            _table(
                ["variable", "default", "meaning"],
                [
                    (
                        "`APIAUTH_TEST_POSTGRES_URL`",
                        "`postgresql+psycopg://postgres@127.0.0.1:5432/test`",
                        "a PostgreSQL server where the tests may create databases",
                    )
                ],
            ),
        ]
    )


# --------------------------------------------------------------------------- CLI


def _param_row(param: Any) -> tuple[str, str, str]:
    # Typer ships its own copy of Click, so parameters are read by their Click attributes,
    # not checked against Click's classes.
    help_text = getattr(param, "help", None) or ""
    if param.param_type_name == "option":
        names = ", ".join(f"`{opt}`" for opt in [*param.opts, *param.secondary_opts])
        default = param.default
        shown = "" if default in (None, False, ()) or callable(default) else f"`{default}`"
        if param.required:
            shown = "required"
        return names, help_text, shown
    name = (param.metavar or param.name or "").upper()
    return f"`{name}`", help_text, "required" if param.required else "optional"


def _commands(command: Any, ctx: Any) -> Iterable[tuple[Any, Any]]:
    """Every leaf command under `command`, with its context, in the order `--help` lists."""
    if hasattr(command, "list_commands"):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            sub_ctx = sub.make_context(name, [], parent=ctx, resilient_parsing=True)
            yield from _commands(sub, sub_ctx)
    else:
        yield command, ctx


def cli_reference() -> str:
    root = typer.main.get_command(cli_app)
    root_ctx = root.make_context("apiauth", [], resilient_parsing=True)
    parts = [
        "# Command line reference\n",
        "Generated from the `apiauth` command (its Typer app) at every documentation build;",
        "`apiauth COMMAND --help` prints the same.\n",
        (root.help or "") + "\n",
    ]
    for command, ctx in _commands(root, root_ctx):
        usage = " ".join([ctx.command_path, *command.collect_usage_pieces(ctx)])
        parts.append(f"## `{ctx.command_path}`\n")
        parts.append(f"```\n{usage}\n```\n")
        if command.help:
            parts.append(command.help.replace("\b", "").strip() + "\n")
        rows = [_param_row(p) for p in command.params if not getattr(p, "hidden", False)]
        if rows:
            parts.append(_table(["argument or option", "meaning", "default"], rows))
    return "\n".join(parts)


# --------------------------------------------------------------------------- REST


def openapi_document() -> dict[str, Any]:
    """The server's OpenAPI document, from an app built (not run) on a scratch database."""
    with tempfile.TemporaryDirectory(prefix="apiauth-docs-") as scratch:
        broker = open_broker(Settings(data_dir=Path(scratch), database_url=None), demo=False)
        try:
            document: dict[str, Any] = create_app(broker, workers=False).openapi()
        finally:
            broker.close()
    return document


def _schema_type(schema: Mapping[str, Any]) -> str:
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return " or ".join(_schema_type(option) for option in schema[key])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_schema_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        extra = schema["additionalProperties"]
        return "object" if extra is True else f"object of {_schema_type(extra)}"
    if "enum" in schema:
        return " \\| ".join(f"`{value}`" for value in schema["enum"])
    return str(kind)


def _body_type(content: Mapping[str, Any]) -> str:
    for media_type, body in content.items():
        return f"{_schema_type(body.get('schema', {}))} ({media_type})"
    return ""


def rest_reference(document: Mapping[str, Any]) -> str:
    parts = [
        "# REST API reference\n",
        "Generated from the server's OpenAPI document at every documentation build (the",
        "running server serves it at `/openapi.json` and browsable at `/docs`; a copy:",
        "[openapi.json](openapi.json)). JSON, snake_case. Errors are",
        '`{"error": {"code": …, "message": …}}` with a fitting 4xx status.\n',
    ]
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            parts.append(f"## `{method.upper()} {path}`\n")
            summary = operation.get("summary")
            if summary:
                parts.append(f"**{summary}**\n")
            if operation.get("description"):
                parts.append(operation["description"].strip() + "\n")
            params = [
                (
                    f"`{p['name']}`",
                    p.get("in", ""),
                    "yes" if p.get("required") else "no",
                    _schema_type(p.get("schema", {})),
                    p.get("description", ""),
                )
                for p in operation.get("parameters", [])
            ]
            if params:
                parts.append(_table(["parameter", "in", "required", "type", "meaning"], params))
            body = operation.get("requestBody")
            if body:
                parts.append(f"Request body: {_body_type(body.get('content', {}))}\n")
            responses = [
                (f"`{code}`", answer.get("description", ""), _body_type(answer.get("content", {})))
                for code, answer in operation.get("responses", {}).items()
            ]
            parts.append(_table(["status", "meaning", "body"], responses))
    schemas = document.get("components", {}).get("schemas", {})
    if schemas:
        parts.append("## Schemas\n")
    for name, schema in schemas.items():
        parts.append(f"### {name} {{ #{name.lower()} }}\n")
        if schema.get("description"):
            parts.append(schema["description"].strip() + "\n")
        required = set(schema.get("required", []))
        rows = [
            (
                f"`{field}`",
                _schema_type(spec),
                "yes" if field in required else "no",
                spec.get("description", ""),
            )
            for field, spec in schema.get("properties", {}).items()
        ]
        if rows:
            parts.append(_table(["field", "type", "required", "meaning"], rows))
    return "\n".join(parts)


# --------------------------------------------------------------------------- providers


def _lifetime(provider: Provider) -> str:
    if provider.access_token_lifetime is None:
        return "does not expire"
    return f"{provider.access_token_lifetime} s"


_REFRESH = {
    "none": "none",
    "reusable": "reusable until revoked",
    "rotating": "single use: every refresh returns a new one",
    "may_rotate": "a refresh may return a new one",
}


def provider_facts(provider: Provider, redirect_uri: str) -> str:
    """The catalog's facts about one provider, as a table and a scope list."""
    facts = [
        ("redirect URI to register", f"`{redirect_uri}`"),
        ("register the app at", provider.app_registration_url or "—"),
        ("provider's OAuth documentation", provider.docs_url or "—"),
        ("authorize URL", f"`{provider.authorization_url}`"),
        ("token URL", f"`{provider.token_url}`"),
        ("client authentication", f"`{provider.token_auth_method}`"),
        ("PKCE (S256)", "yes" if provider.pkce else "no"),
        ("access token lifetime", _lifetime(provider)),
        ("refresh token", _REFRESH.get(provider.refresh_token, provider.refresh_token)),
        ("who-am-I", f"`{provider.userinfo_url}`" if provider.userinfo_url else "—"),
        ("revocation", f"`{provider.revoke_url}`" if provider.revoke_url else "none"),
        ("API base URL", f"`{provider.api_base_url}`" if provider.api_base_url else "—"),
        (
            "kept in `extra`",
            ", ".join(f"`{f}`" for f in provider.keep_response_fields) or "—",
        ),
    ]
    scopes = [
        (f"`{scope.name}`", scope.description, "yes" if scope.default else "")
        for scope in provider.scopes
    ]
    return "\n".join(
        [
            _table(["", provider.display_name], facts),
            f"Scopes (`apiauth connect SITE {provider.name} --scope …`; the defaults are",
            "ticked in the dashboard and used when none are given):\n",
            _table(["scope", "what it allows", "default"], scopes),
        ]
    )


def catalog_table() -> str:
    catalog = load_catalog()
    rows = [
        (
            f"`{p.name}`",
            p.display_name,
            f"`{p.auth_mode}`",
            p.category,
            ", ".join(f"`{s}`" for s in p.default_scopes) or "—",
            _lifetime(p),
            _REFRESH.get(p.refresh_token, p.refresh_token),
        )
        for p in sorted(catalog.values(), key=lambda p: p.name)
    ]
    return _table(
        [
            "name",
            "provider",
            "auth mode",
            "category",
            "default scopes",
            "access token",
            "refresh token",
        ],
        rows,
    )


# --------------------------------------------------------------------------- hooks


def _generated(config: MkDocsConfig, src_uri: str, content: str) -> File:
    return File.generated(config, src_uri, content=content)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    document = openapi_document()
    files.append(_generated(config, "reference/configuration.md", configuration_reference()))
    files.append(_generated(config, "reference/cli.md", cli_reference()))
    files.append(_generated(config, "reference/rest.md", rest_reference(document)))
    files.append(
        _generated(config, "reference/openapi.json", json.dumps(document, indent=2) + "\n")
    )
    # The security model is its own document (docs/SECURITY.md), written with the code it
    # describes; it is published as the Security page.
    source = files.get_file_from_path(SECURITY_SOURCE)
    if source is not None:
        files.remove(source)
        content = source.content_string
    else:
        log.info("docs/SECURITY.md does not exist yet: the Security page says so")
        content = (
            "# Security\n\nThe security model (what apiauth protects, how, and how to report a "
            "vulnerability) is being written in `docs/SECURITY.md`; this page shows it once "
            "it exists. Until then, [Operating apiauth](operating.md) covers master keys and "
            "their rotation, and [Concepts](concepts.md) which token reads what.\n"
        )
    files.append(_generated(config, SECURITY_PAGE, content))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """`<!-- catalog:NAME -->` becomes the catalog's facts about provider NAME, and
    `<!-- catalog:all -->` the table of every provider."""
    if "<!-- catalog:" not in markdown:
        return markdown
    catalog = load_catalog()
    redirect_uri = Settings.model_construct(public_url="<APIAUTH_PUBLIC_URL>").redirect_uri

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name == "all":
            return catalog_table()
        if name not in catalog:
            log.warning("%s: no provider %r in the catalog", page.file.src_uri, name)
            return match[0]
        return provider_facts(catalog[name], redirect_uri)

    return CATALOG_MARKER.sub(replace, markdown)
