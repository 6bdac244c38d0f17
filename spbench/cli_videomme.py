"""``spbench suite videomme``: Video-MME accuracy and prefill speed, dense and per method x budget."""

from __future__ import annotations

import shlex
import time
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from spbench.cli_common import console, err_console, friendly_errors
from spbench.errors import SpbenchError

EXIT_INTERRUPTED = 130


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def results_table(records: list[dict[str, Any]]) -> Table:
    table = Table(title="Video-MME", show_lines=False)
    for col in ("method", "budget", "status", "acc %", "short", "medium", "long", "density", "prefill s", "speedup", "attn share"):
        table.add_column(col)
    for r in records:
        table.add_row(
            escape("dense (baseline)" if r.get("role") == "baseline" else str(r.get("method"))),
            _fmt(r.get("budget"), "g"),
            r.get("status", "?"),
            _fmt(r.get("accuracy")),
            _fmt(r.get("accuracy.short")),
            _fmt(r.get("accuracy.medium")),
            _fmt(r.get("accuracy.long")),
            _fmt(r.get("density"), ".3f"),
            _fmt(r.get("prefill_s"), ".3g"),
            _fmt(r.get("speedup_prefill"), ".2f"),
            _fmt(r.get("attention_share"), ".2f"),
        )
    return table


def suite_videomme(
    model: str = typer.Option(..., "--model", help="Qwen2.5-VL checkpoint: a local folder or a Hugging Face id already in the local cache"),
    methods: str = typer.Option("all", "--methods", "-m", help="'all' (every sparse method), or a comma list of names, aliases and globs"),
    budgets: str = typer.Option(",".join(map(str, (0.1, 0.2, 0.35, 0.5))), help="comma list of target densities in (0, 1]"),
    param: list[str] = typer.Option([], "--param", "-p", help="knob=value for every method with that knob, or method.knob=value (repeatable)"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="local lmms-lab/Video-MME copy: videomme/test-*.parquet + data/<videoID>.mp4 (default: the local HF cache)"),
    frames: int = typer.Option(32, "--frames", help="frames sampled per video (lmms-eval's max_num_frames)"),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="pixels per frame at most (default: the stock model's)"),
    min_pixels: Optional[int] = typer.Option(None, "--min-pixels", help="pixels per frame at least (default: the stock model's, capped at --max-pixels)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="answer only N questions, spread over short/medium/long"),
    num_processes: int = typer.Option(1, "--num-processes", help="data-parallel GPUs: launches each cell through `accelerate launch`"),
    batch_size: int = typer.Option(1, "--batch-size", help="questions per generate call; >1 pads, and padded prefills run dense"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    device_map: Optional[str] = typer.Option(None, "--device-map", help="transformers device_map for one process (default: the stock model's 'auto')"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (the stock bfloat16 on GPU, float32 on CPU), bfloat16, float16, float32"),
    use_cache: Optional[str] = typer.Option(None, "--use-cache", help="lmms-eval response-cache folder (keys include method, budget and knobs)"),
    seed: int = typer.Option(0, "--seed"),
    out: str = typer.Option("results", "--out", help="results root: the run goes to OUT/<run-id>/"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="run id; an existing one is resumed (its recorded cells are skipped)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="prepare the questions, list the cells and exit"),
) -> None:
    """Answer Video-MME with dense attention and each method x budget; record accuracy by duration and prefill speed.

    Offline only: the model and the dataset must be local (see --data-dir).
    Each cell runs lmms-eval in its own process; a failing cell is recorded
    with its reason and the sweep goes on. Re-running a run id resumes it.
    """
    from spbench.cli_suite_kernel import RichProgress
    from spbench.integrations.lmms.local import resolve_model, set_offline
    from spbench.parsing import parse_budget, parse_list
    from spbench.results import RunStore
    from spbench.suites import videomme as suite
    from spbench.suites.kernel import parse_params_items

    set_offline()
    sweep = suite.VideoMMESweep(
        model=model,
        methods=parse_list(methods),
        budgets=[parse_budget(b) for b in parse_list(budgets)],
        params=parse_params_items(param),
        data_dir=data_dir,
        frames=frames,
        max_pixels=max_pixels,
        min_pixels=min_pixels,
        limit=limit,
        num_processes=num_processes,
        batch_size=batch_size,
        device=device,
        device_map=device_map,
        dtype=dtype,
        use_cache=use_cache,
        seed=seed,
    )
    if not sweep.methods or not sweep.budgets:
        raise SpbenchError("--methods and --budgets must not be empty")
    sweep.validate()
    # Everything that can be wrong with the request fails before a run folder is written.
    resolve_model(model)
    suite.locate_data(data_dir)
    suite.selected_runs(sweep)
    store = RunStore(out, run_id, label="videomme", config={"command": "suite videomme", "sweep": sweep.to_dict()})
    notes: list[str] = []
    data = suite.prepare_data(sweep, store.path, notes)
    cells = suite.plan_cells(sweep, data)
    for note in notes:
        err_console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
    if batch_size > 1:
        err_console.print("[yellow]note:[/yellow] --batch-size > 1 pads prompts; padded prefills run dense (counted as fallbacks)", highlight=False)
    console.print(f"run {store.run_id} in {store.path}{' (resumed)' if store.resumed else ''}: {data.questions} questions ({data.subset}) from {escape(data.source)}, {len(cells)} cells", highlight=False)
    if dry_run:
        table = Table("#", "cell", "key", title="cells (dry run: nothing evaluated)")
        for i, cell in enumerate(cells, 1):
            table.add_row(str(i), escape(cell.describe()), cell.key)
        console.print(table)
        return
    started = time.monotonic()
    resume = f"spbench suite videomme --model {shlex.quote(model)} --out {shlex.quote(out)} --run-id {shlex.quote(store.run_id)} ..."
    try:
        with RichProgress() as progress:
            outcome = suite.run_sweep(sweep, cells, data, store, progress)
    except KeyboardInterrupt:
        err_console.print(f"\n[yellow]interrupted[/yellow] after {time.monotonic() - started:.0f} s; resume with the same options:\n  {escape(resume)}", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    keys = {c.key for c in cells}
    console.print(results_table([r for r in store.records() if r.get("cell_key") in keys]))
    counts = ", ".join(f"{n} {s}" for s, n in sorted(outcome.counts.items())) or "none"
    console.print(f"{outcome.ran} cells evaluated in {outcome.seconds:.0f} s ({counts}); {outcome.already_done} were already recorded.", highlight=False)
    console.print(f"results: {escape(str(store.path))}\nreport:  spbench report {escape(shlex.quote(str(store.path)))}", highlight=False)


def register(app: typer.Typer, suite_app: typer.Typer) -> None:
    suite_app.command("videomme")(friendly_errors(suite_videomme))
