"""The report's page: its Jinja2 template filled with the sections' context."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["render"]


def render(context: Mapping[str, Any]) -> str:
    """The page: ``templates/report.html.j2`` filled with ``context``, every value escaped as HTML.

    The context holds plain strings, numbers, lists and mappings (figures as ``{"src": data URI, "alt": text}``);
    the template holds the page's structure and CSS. Loaded through the package (not a path beside this file) so
    that it is found inside an installed wheel too.
    """
    import jinja2  # only the report needs it: the experiments extra brings it

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("curvature_callback.analysis", "templates"),
        autoescape=True,  # every template here is HTML, and every value in it comes from a run folder
        undefined=jinja2.StrictUndefined,  # a key missing from the context is a bug here, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template("report.html.j2").render(context)
