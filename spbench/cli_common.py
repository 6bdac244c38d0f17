"""Pieces shared by the CLI command modules."""

from __future__ import annotations

import functools
from typing import Any, Callable

import typer
from rich.console import Console

from spbench.errors import SpbenchError

console = Console()
err_console = Console(stderr=True)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn SpbenchError into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpbenchError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True, markup=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper
