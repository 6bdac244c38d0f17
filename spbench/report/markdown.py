"""Render a :class:`~spbench.report.build.Report` as Markdown (PNGs referenced by relative path)."""

from __future__ import annotations

import re

from spbench.report.build import Report, Table

_SPECIAL = re.compile(r"([\\`*\[\]|])")


def escape(text: str) -> str:
    """Make a user-provided string inert in Markdown: no markup, no raw HTML, no table breaks."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _SPECIAL.sub(r"\\\1", text)
    return " ".join(text.split())  # a newline would end the table row


def table(t: Table) -> list[str]:
    if not t.columns:
        return []
    lines = ["| " + " | ".join(escape(c) for c in t.columns) + " |", "|" + "|".join("---" for _ in t.columns) + "|"]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in t.rows]
    return lines


def render_markdown(report: Report) -> str:
    out = [f"# {escape(report.title)}", "", f"Generated {escape(report.generated)} by `spbench report`.", ""]
    out += ["## Summary", ""]
    out += table(Table(["what was swept", ""], [[k, v] for k, v in report.swept]))
    out.append("")
    out += ["### Runs", ""] + table(report.runs_table) + [""]
    for note in report.notes:
        out += [f"> {escape(note)}", ""]
    for group in report.groups:
        out += [f"## {escape(group.label)}", ""]
        counts = ", ".join(f"{n} {s}" for s, n in group.counts.items())
        out.append(f"Cells: {escape(counts)}.")
        if group.quality is not None and group.efficiency is not None:
            out.append(
                f"Quality: `{escape(group.quality.name)}` ({group.quality.direction}); "
                f"efficiency: `{escape(group.efficiency.name)}` ({group.efficiency.direction}). "
                "Columns marked * are the Pareto axes."
            )
        out.append("")
        for note in group.notes:
            out += [f"> {escape(note)}", ""]
        for plot in group.plots:
            out += [f"![{escape(plot.title)}]({plot.file})", ""]
        if group.frontier is not None:
            out += ["### Pareto frontier", "", f"_{escape(group.frontier.caption)}_", ""]
            out += table(group.frontier) if group.frontier else ["(no point has both metrics)"]
            out.append("")
        if group.comparison:
            out += ["### Runs side by side", ""] + table(group.comparison) + [""]
        if group.cells:
            out += ["### All cells", ""] + table(group.cells) + [""]
    if report.scaling:
        out += ["## Time against sequence length", ""]
        for entry in report.scaling:
            out += [f"### {escape(entry.label)}", "", f"_{escape(entry.table.caption)}_", ""]
            out += [line for plot in entry.plots for line in (f"![{escape(plot.title)}]({plot.file})", "")]
            out += table(entry.table) + [""]
    out += ["## Failures", ""]
    out += table(report.failures) if report.failures else ["None: every cell ran and gave finite output."]
    out.append("")
    return "\n".join(out)
