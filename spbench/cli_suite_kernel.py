"""``spbench suite kernel`` (a budget sweep of kernel cells) and ``spbench report``."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from spbench.cli_common import console, err_console, friendly_errors
from spbench.errors import SpbenchError

EXIT_INTERRUPTED = 130  # what a shell reports for SIGINT


class RichProgress:
    """Renders the sweep's progress: a bar (cells done/total, elapsed, ETA) and the cell in flight."""

    def __init__(self) -> None:
        self.bar = Progress(
            SpinnerColumn(),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            # Last, so a narrow terminal cuts the cell's description rather than the times.
            TextColumn("[progress.description]{task.description}"),
            console=console,
            transient=False,
        )
        self.task = None

    def __enter__(self) -> "RichProgress":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def start(self, total: int, done: int) -> None:
        self.task = self.bar.add_task("starting", total=total, completed=done)

    def cell_started(self, pc, index: int) -> None:
        self.bar.update(self.task, description=escape(pc.describe()))

    def cell_finished(self, pc, record: dict[str, Any]) -> None:
        self.bar.advance(self.task)
        if record["status"] != "ok":
            colour = "red" if record["status"] == "failed" else "yellow"
            self.bar.console.print(f"[{colour}]{record['status']}[/{colour}] {escape(pc.describe())}: {escape(str(record.get('error')))}", highlight=False)

    def note(self, text: str) -> None:
        self.bar.console.print(f"[yellow]note:[/yellow] {escape(text)}", highlight=False)


def _resume_command(out: str, run_id: str) -> str:
    return f"spbench suite kernel --out {shlex.quote(str(out))} --run-id {shlex.quote(run_id)}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def suite_kernel(
    methods: Optional[str] = typer.Option(None, "--methods", "-m", help="'all' (every sparse method), or a comma list of names, aliases and globs ('psa,block', '*attention*', 'token-sparse+*')"),
    budgets: Optional[str] = typer.Option(None, help="comma list of target densities in (0, 1] (default: 0.05,0.1,0.2,0.3,0.5)"),
    seq: Optional[str] = typer.Option(None, help="comma list of query lengths (32k,110k; k = 1000, Ki = 1024) (default: 32k,110k on GPU, 4k on CPU)"),
    workload: Optional[str] = typer.Option(None, help="comma list of random, video, trace:PATH (default: video)"),
    heads: Optional[int] = typer.Option(None, help="query heads (default: 40 on GPU, 4 on CPU)"),
    kv_heads: Optional[int] = typer.Option(None, help="KV heads (GQA) (default: --heads)"),
    head_dim: Optional[str] = typer.Option(None, help="head dim, or a comma list (default: 128)"),
    batch: Optional[int] = typer.Option(None, help="default: 1"),
    dtype: Optional[str] = typer.Option(None, help="bf16, fp16, fp32; auto = bf16 on GPU, fp32 on CPU (default: auto)"),
    causal: Optional[bool] = typer.Option(None, "--causal/--no-causal", help="default: no-causal"),
    param: list[str] = typer.Option([], "--param", "-p", help="knob=value for every method with that knob, or method.knob=value (repeatable)"),
    grid: Optional[str] = typer.Option(None, help="video latent grid TxHxW (one --seq only) (default: derived from --seq)"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda[:N] (default: auto)"),
    repeats: Optional[int] = typer.Option(None, help="timed repeats per cell (default: 5)"),
    warmup: Optional[int] = typer.Option(None, help="untimed warm-up calls per cell (default: 2)"),
    seed: Optional[int] = typer.Option(None, help="default: 0"),
    error_rows: Optional[int] = typer.Option(None, help="query rows sampled for the error vs exact attention (default: 256)"),
    baseline: Optional[bool] = typer.Option(None, "--baseline/--no-baseline", help="record the fastest dense backend once per shape (default: baseline)"),
    config: Optional[Path] = typer.Option(None, "--config", help="sweep TOML file; options given on the command line replace its values"),
    out: str = typer.Option("results", "--out", help="results root: the run goes to OUT/<run-id>/"),
    run_id: Optional[str] = typer.Option(None, help="run id; an existing one is resumed (its recorded cells are skipped)"),
    max_minutes: Optional[float] = typer.Option(None, help="stop between cells before this much wall time is spent (resumable)"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="on resume, measure failed and invalid cells again (reports keep the newest record of a cell)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the cells and exit without running anything"),
) -> None:
    """Sweep methods x budgets x shapes; every cell is recorded, failures too; re-running the run id resumes.

    Values come from the defaults, then --config, then the options given here.
    The resolved sweep is saved as OUT/<run-id>/sweep.toml; resuming a run
    without --config reuses it, and a resumed run cannot change its sweep.
    """
    from spbench.results import RUN_FILE, RunStore
    from spbench.suites import kernel as suite

    if max_minutes is not None and max_minutes <= 0:
        raise SpbenchError("--max-minutes must be positive")
    cli_values = dict(
        methods=methods, budgets=budgets, seq=seq, workload=workload, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        batch=batch, dtype=dtype, causal=causal, params=suite.parse_params_items(param) if param else None, grid=grid,
        device=device, repeats=repeats, warmup=warmup, seed=seed, error_rows=error_rows, baseline=baseline,
    )  # fmt: skip
    run_dir = Path(out) / run_id if run_id else None
    resuming = run_dir is not None and (run_dir / RUN_FILE).exists()
    stored = None
    if resuming:
        if not (run_dir / suite.SWEEP_FILE).exists():
            raise SpbenchError(f"run {run_id!r} in {out} exists but has no {suite.SWEEP_FILE} (not a kernel suite run): choose another --run-id")
        stored = suite.resolve_sweep(suite.load_config(run_dir / suite.SWEEP_FILE))
    file_values = suite.load_config(config) if config else (suite.load_config(run_dir / suite.SWEEP_FILE) if resuming else {})
    requested = suite.resolve_sweep(file_values, cli_values)
    notes: list[str] = []
    cells = suite.plan_cells(requested, notes)
    sweep = suite.pin_methods(requested, cells)  # "all" and globs saved as the names they selected
    if stored is not None:
        diff = suite.sweep_differences(stored, sweep)
        if diff:
            raise SpbenchError(f"run {run_id!r} was started with a different sweep (differs in: {', '.join(diff)}); resume it as `{_resume_command(out, run_id)}`, or use a new --run-id")
    if sweep.device.startswith("cuda") and sweep.warmup == 0:
        notes.append("--warmup 0 on a GPU: the first timed call of each cell includes Triton compilation and autotuning")
    for note in notes:
        err_console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
    method_cells = [pc for pc in cells if pc.role == "method"]
    shapes = len({str(pc.cell.shape_key()) for pc in cells})
    console.print(
        f"sweep: {len(cells)} cells on {sweep.device}: {len(method_cells)} of {len({pc.cell.method for pc in method_cells})} methods "
        f"x {len(sweep.budgets)} budgets x {shapes} shapes" + (f", {len(cells) - len(method_cells)} dense baselines" if sweep.baseline else ""),
        highlight=False,
    )
    if dry_run:
        table = Table("#", "cell", "key", title="cells (dry run: nothing measured)")
        for i, pc in enumerate(cells, 1):
            table.add_row(str(i), escape(pc.describe()), pc.key)
        console.print(table)
        console.print(suite.dump_toml(sweep), markup=False, highlight=False)
        return

    store = RunStore(out, run_id, label="kernel-suite", config={"command": "suite kernel", "sweep": sweep.to_dict(), "methods_requested": requested.methods})
    if not (store.path / suite.SWEEP_FILE).exists():
        _write_atomic(store.path / suite.SWEEP_FILE, suite.dump_toml(sweep))
    console.print(f"run {store.run_id} in {store.path}" + (" (resumed)" if store.resumed else ""), highlight=False)
    started = time.monotonic()
    try:
        with RichProgress() as progress:
            outcome = suite.run_sweep(cells, store, progress, max_seconds=max_minutes * 60 if max_minutes else None, retry_failed=retry_failed)
    except KeyboardInterrupt:
        recorded = len(store.done_keys() & {pc.key for pc in cells})
        err_console.print(
            f"\n[yellow]interrupted[/yellow] after {time.monotonic() - started:.0f} s: {recorded} of {len(cells)} cells recorded in {escape(str(store.path))} "
            f"(the cell in flight is lost). Resume with:\n  {escape(_resume_command(out, store.run_id))}",
            highlight=False,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    counts = ", ".join(f"{n} {s}" for s, n in sorted(outcome.counts.items())) or "none"
    console.print(
        f"{outcome.ran} cells measured in {outcome.seconds:.0f} s ({counts}); {outcome.already_done} were already recorded.",
        highlight=False,
    )
    left = len(cells) - outcome.already_done - outcome.ran
    if outcome.stopped == "time cap":
        console.print(f"[yellow]stopped at the --max-minutes cap[/yellow] with {left} cells left. Resume with:\n  {escape(_resume_command(out, store.run_id))}", highlight=False)
    elif outcome.stopped == "device error":
        err_console.print(
            f"[red]stopped: the GPU is unusable in this process after a failed cell[/red] ({escape(outcome.detail or '')}); "
            f"{left} cells left. The failed cell is recorded; a new process resumes with:\n  {escape(_resume_command(out, store.run_id))}",
            highlight=False,
        )
        raise typer.Exit(1)
    console.print(f"results: {escape(str(store.path))}\nreport:  spbench report {escape(shlex.quote(str(store.path)))}", highlight=False)


def report(
    runs: list[Path] = typer.Argument(..., help="run folders (results/<run-id>) or folders of runs"),
    name: Optional[str] = typer.Option(None, help="report name (default: the run id, or compare-<ids> for several)"),
    out: Path = typer.Option(Path("reports"), "--out", help="reports root: the report goes to OUT/<name>/"),
    format: str = typer.Option("md,html", "--format", help="md, html or md,html"),
    quality: Optional[str] = typer.Option(None, help="quality metric (default per suite: rel_l2, vbench_total/psnr, accuracy); name:higher|lower for one outside the tables"),
    efficiency: Optional[str] = typer.Option(None, help="efficiency metric: speedup_total (default), speedup_run, density, speedup, speedup_prefill"),
    force: bool = typer.Option(False, "--force", help="replace an existing report of the same name"),
) -> None:
    """Render runs as Markdown and a self-contained HTML page: Pareto plots, frontier tables, curves, failures."""
    from spbench.report.build import write_report

    written = write_report(runs, out=out, name=name, formats=format, quality=quality, efficiency=efficiency, force=force)
    for kind, path in written.items():
        console.print(f"{kind}: {escape(str(path))}", highlight=False)


def register(app: typer.Typer, suite_app: typer.Typer) -> None:
    suite_app.command("kernel")(friendly_errors(suite_kernel))
    app.command("report")(friendly_errors(report))
