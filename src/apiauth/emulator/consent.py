"""The emulator's consent page: what a person sees at a provider's authorize URL.

Self-contained HTML (inline style, no external resources, no JavaScript); every value is
escaped. The form posts back to the same URL with every authorize parameter as a hidden field,
the scopes as checkboxes the person may untick, and an Authorize / Deny decision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from apiauth.providers import Provider

__all__ = ["REQUESTED_SCOPE_FIELD", "render_consent", "render_error"]

#: The hidden field carrying the requested `scope` parameter; `scope` itself names the
#: checkboxes, so that what the person leaves ticked is what is granted.
REQUESTED_SCOPE_FIELD = "requested_scope"

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;background:#f4f5f7;color:#1f2328;
margin:0;display:flex;justify-content:center;padding:3rem 1rem}
main{background:#fff;border:1px solid #d0d7de;border-radius:10px;max-width:30rem;width:100%;
padding:2rem;box-shadow:0 1px 3px rgba(0,0,0,.06)}
h1{font-size:1.3rem;margin:0 0 .25rem}
.note{color:#59636e;font-size:.85rem;margin:0 0 1.5rem}
fieldset{border:1px solid #d0d7de;border-radius:6px;padding:.75rem 1rem;margin:0 0 1.5rem}
legend{font-weight:600;padding:0 .25rem}
label{display:flex;gap:.6rem;align-items:flex-start;padding:.35rem 0;cursor:pointer}
label small{display:block;color:#59636e}
code{font-size:.9em}
.buttons{display:flex;gap:.75rem}
button{font:inherit;padding:.55rem 1.2rem;border-radius:6px;border:1px solid #d0d7de;
background:#f6f8fa;cursor:pointer}
button[value=authorize]{background:#1f883d;border-color:#1a7f37;color:#fff}
"""


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        '<meta name=viewport content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def render_consent(
    provider: Provider,
    *,
    action: str,
    params: Mapping[str, str],
    requested_scopes: Sequence[str],
    client_name: str,
) -> str:
    descriptions = {s.name: s.description for s in provider.scopes}
    title = f"{provider.display_name} (emulated)"
    hidden = "\n".join(
        f'<input type=hidden name="{escape(REQUESTED_SCOPE_FIELD if k == "scope" else k)}" '
        f'value="{escape(v)}">'
        for k, v in params.items()
    )
    if requested_scopes:
        boxes = "\n".join(
            f'<label><input type=checkbox name=scope value="{escape(name)}" checked>'
            f"<span><code>{escape(name)}</code>"
            f"<small>{escape(descriptions.get(name, ''))}</small></span></label>"
            for name in requested_scopes
        )
    else:
        boxes = "<p>No scopes requested.</p>"
    body = f"""<h1>{escape(title)}</h1>
<p class=note>This page stands in for {escape(provider.display_name)}'s own: nothing leaves
this machine. The application <strong>{escape(client_name)}</strong> asks for access to the
demo account.</p>
<form method=post action="{escape(action)}">
{hidden}
<fieldset><legend>Permissions</legend>
{boxes}
</fieldset>
<div class=buttons>
<button type=submit name="decision" value="authorize">Authorize</button>
<button type=submit name="decision" value="deny">Deny</button>
</div>
</form>"""
    return _page(title, body)


def render_error(provider: Provider, message: str) -> str:
    title = f"{provider.display_name} (emulated)"
    body = f"<h1>{escape(title)}</h1>\n<p>The authorization request is invalid:</p>\n" + (
        f"<p><strong>{escape(message)}</strong></p>"
    )
    return _page(title, body)
