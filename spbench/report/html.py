"""Render a :class:`~spbench.report.build.Report` as one self-contained HTML page.

The page is a jinja2 template (package data, ``templates/report.html.j2``)
rendered with autoescaping on, so every string that came from a record,
a run folder or the command line is escaped. Images are base64 data URIs,
CSS is inline, there is no script and no external reference.
"""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined

from spbench.report.build import Report

TEMPLATE = "report.html.j2"


def environment() -> Environment:
    return Environment(
        loader=PackageLoader("spbench.report", "templates"),
        autoescape=True,  # every {{ value }} is HTML-escaped, whatever its file name
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(report: Report) -> str:
    return environment().get_template(TEMPLATE).render(report=report)
