"""The ``spbench`` command line.

Every command turns :class:`SpbenchError` (bad input, missing GPU, missing
model...) into a one-line message and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys

import typer
from rich.table import Table

from spbench.errors import SpbenchError

app = typer.Typer(
    name="spbench",
    help="Benchmark sparse attention methods: kernels, video generation, video understanding.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
suite_app = typer.Typer(help="Sweep methods x budgets x shapes and record every cell.", no_args_is_help=True)
app.add_typer(suite_app, name="suite")

from spbench.cli_common import console, err_console, friendly_errors  # noqa: E402


@app.command("methods")
@friendly_errors
def methods_cmd() -> None:
    """List registered methods: names, aliases, knobs and defaults."""
    from spbench.method import COMMON_KNOBS
    from spbench.registry import entries

    table = Table(title="spbench methods", show_lines=True)
    for column in ("name", "aliases", "kind", "knobs (default)", "source"):
        table.add_column(column)
    for entry in sorted(entries().values(), key=lambda e: e.name):
        if entry.cls is None:
            table.add_row(entry.name, "", "[red]failed to load[/red]", entry.error or "", entry.source)
            continue
        cls = entry.cls
        knobs = "\n".join(f"{k}={v.default!r}" for k, v in cls.knobs.items()) or "-"
        kind = "sparse" if cls.sparse else "dense"
        table.add_row(entry.name, ", ".join(cls.aliases), f"{kind}: {cls.summary}", knobs, entry.source)
    console.print(table)
    common = ", ".join(f"{k}={v.default!r}" for k, v in COMMON_KNOBS.items())
    console.print(f"Every method also takes: {common}")


def _register_commands() -> None:
    """Attach commands that live in their own modules."""
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(app, suite_app)


# Each module defines register(app, suite_app).
COMMAND_MODULES: list[str] = ["spbench.cli_kernel", "spbench.cli_suite_kernel", "spbench.cli_videomme", "spbench.cli_vbench"]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        _register_commands()
        app(args=argv, prog_name="spbench")
    except SpbenchError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
