"""The status site's page: one self-contained HTML document, no fonts, images or scripts from anywhere."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Component:
    """One line of the status page: what it is and how it is doing."""

    name: str
    state: str = "operational"


DEFAULT_COMPONENTS = (Component("HTTP routing"), Component("Dynos"), Component("Databases"), Component("Platform API"))
_COLOURS = {"operational": "#1a7f37", "degraded": "#9a6700", "outage": "#cf222e"}


def render(
    title: str, components: Sequence[Component] = DEFAULT_COMPONENTS, notice: str = "", updated: str = ""
) -> str:
    """The page, with inline styles only, so it renders while every platform asset is unreachable; `notice`
    is the newest post's message and `updated` its time. The feed beside it is linked, never fetched."""
    rows = "\n".join(
        f'<li><span>{html.escape(c.name)}</span><b style="color:{_COLOURS.get(c.state, "#57606a")}">'
        f"{html.escape(c.state)}</b></li>"
        for c in components
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{html.escape(title)}</title><link rel="alternate" type="application/atom+xml" href="feed.atom">
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}}
li{{display:flex;justify-content:space-between;padding:.5rem 0;border-bottom:1px solid #d0d7de}}
ul{{list-style:none;padding:0}}</style></head>
<body><h1>{html.escape(title)}</h1>{f"<p>{html.escape(notice)}</p>" if notice else ""}<ul>
{rows}
</ul>{f'<p><small>Updated {html.escape(updated)} · <a href="feed.atom">feed</a></small></p>' if updated else ""}
</body></html>
"""
