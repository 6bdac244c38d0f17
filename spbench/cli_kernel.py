"""``spbench kernel``: measure one method on one shape."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from spbench.cli_common import console, err_console, friendly_errors
from spbench.errors import SpbenchError
from spbench.parsing import parse_budget, parse_grid, parse_params, parse_seq

# Defaults: the H100 reference shape on a GPU, something that finishes in seconds on the CPU.
GPU_DEFAULTS = {"seq": "32k", "heads": 40}
CPU_DEFAULTS = {"seq": "4k", "heads": 4}


def build_cell(method, seq, kv_seq, heads, kv_heads, head_dim, batch, dtype, causal, budget, param, workload, grid, device, repeats, warmup, seed, error_rows):
    """Turn CLI options into a validated KernelCell (shared with the suite)."""
    from spbench.bench import KernelCell, resolve_device, validate

    dev = resolve_device(device)
    defaults = GPU_DEFAULTS if dev.type == "cuda" else CPU_DEFAULTS
    dtype = dtype if dtype != "auto" else ("bf16" if dev.type == "cuda" else "fp32")
    cell = KernelCell(
        method=method,
        seq=parse_seq(seq if seq is not None else defaults["seq"]),
        kv_seq=parse_seq(kv_seq) if kv_seq else None,
        budget=parse_budget(budget) if budget is not None else None,
        params=parse_params(param),
        workload=workload,
        batch=batch,
        heads=heads if heads is not None else defaults["heads"],
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype=dtype,
        causal=causal,
        device=str(dev),
        grid=parse_grid(grid) if grid else None,
        seed=seed,
        repeats=repeats,
        warmup=warmup,
        error_rows=error_rows,
    )
    validate(cell)
    return cell


def _fmt(value, spec=".3g"):
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def render_record(record: dict) -> Table:
    table = Table(title=f"spbench kernel: {record['method']} ({record['status']})", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    shape = f"B={record['batch']} Hq={record['heads']} Hkv={record['kv_heads']} L={record['seq']} Lk={record['kv_seq']} d={record['head_dim']} {record['dtype']} {'causal' if record['causal'] else 'non-causal'}"
    rows = [
        ("shape", shape),
        ("workload", record["workload"] + (f" grid {'x'.join(map(str, record['grid']))}" if record.get("grid") else "")),
        ("device / clock", f"{record['device']} / {record.get('clock', '-')}"),
        ("budget", _fmt(record.get("budget"))),
        ("measured density", _fmt(record.get("density"), ".4f")),
        ("plan ms (median, iqr)", f"{_fmt(record.get('plan_ms'), '.3f')} ({_fmt(record.get('plan_iqr_ms'), '.3f')})"),
        ("run ms (median, iqr)", f"{_fmt(record.get('run_ms'), '.3f')} ({_fmt(record.get('run_iqr_ms'), '.3f')})"),
        (f"dense ms ({record.get('dense_backend', '-')}, fastest)", _fmt(record.get("dense_ms"), ".3f")),
        ("speedup: run only", _fmt(record.get("speedup_run"), ".2f") + "x"),
        ("speedup: plan + run", _fmt(record.get("speedup_total"), ".2f") + "x"),
        ("plan time / dense time", _fmt(record.get("plan_share"), ".2%") if record.get("plan_share") is not None else "-"),
        ("TFLOP/s (dense-equivalent, actual)", f"{_fmt(record.get('tflops_effective'), '.1f')}, {_fmt(record.get('tflops_actual'), '.1f')}"),
        ("peak memory MB (method, dense)", f"{_fmt(record.get('peak_mem_mb'), '.0f')}, {_fmt(record.get('dense_peak_mem_mb'), '.0f')}"),
        (f"rel L2 / cosine / max abs ({record.get('error_rows', '-')} rows)", f"{_fmt(record.get('rel_l2'), '.3e')} / {_fmt(record.get('cosine'), '.6f')} / {_fmt(record.get('max_abs'), '.3e')}"),
    ]
    if record.get("executor"):
        ex = record["executor"]
        rows.append(("executor kernel (config, source)", f"{ex.get('kernel', '-')} ({ex.get('config', '-')}, {ex.get('source', '-')})"))
    if record.get("block_mass_top10") is not None:
        rows.append(("attention mass in top 10% of 128x64 blocks", _fmt(record["block_mass_top10"], ".1%")))
    for name, b in (record.get("dense_backends") or {}).items():
        rows.append((f"  dense {name}", f"{b['ms']:.3f} ms, {b['tflops']:.1f} TFLOP/s" if "ms" in b else f"unavailable: {b['error'][:60]}"))
    if record.get("error"):
        rows.append(("error", record["error"]))
    for name, value in rows:
        table.add_row(name, value)
    return table


def kernel(
    method: str = typer.Option(..., "--method", "-m", help="method name or alias (see `spbench methods`); outer+inner composes"),
    seq: Optional[str] = typer.Option(None, help="query length: 32768, 110k (k = 1000), 1.5M, 128Ki (Ki = 1024); default 32k on GPU, 4k on CPU"),
    kv_seq: Optional[str] = typer.Option(None, help="key length (default: --seq)"),
    heads: Optional[int] = typer.Option(None, help="query heads (default 40 on GPU, 4 on CPU)"),
    kv_heads: Optional[int] = typer.Option(None, help="KV heads (GQA); default --heads"),
    head_dim: int = typer.Option(128),
    batch: int = typer.Option(1),
    dtype: str = typer.Option("auto", help="bf16, fp16, fp32; auto = bf16 on GPU, fp32 on CPU"),
    causal: bool = typer.Option(False, "--causal/--no-causal"),
    budget: Optional[float] = typer.Option(None, help="target density in (0, 1]"),
    param: list[str] = typer.Option([], "--param", "-p", help="native knob name=value (repeatable)"),
    workload: str = typer.Option("video", help="random, video or trace:PATH"),
    grid: Optional[str] = typer.Option(None, help="video latent grid TxHxW (default: derived from --seq)"),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]"),
    repeats: int = typer.Option(10, help="timed repeats (median and spread reported)"),
    warmup: int = typer.Option(3, help="untimed warm-up calls"),
    seed: int = typer.Option(0),
    error_rows: int = typer.Option(256, help="query rows sampled for the error against exact attention"),
    as_json: bool = typer.Option(False, "--json", help="print the record as JSON"),
    out: str = typer.Option("results", "--out", help="results root: the run goes to OUT/<run-id>/"),
    run_id: Optional[str] = typer.Option(None, help="run id (default: a new timestamped id; an existing id is appended to)"),
) -> None:
    """Measure one method on one shape: plan and run time, speedup vs the fastest dense backend, density, error."""
    from spbench.bench import run_cell
    from spbench.results import RunStore

    cell = build_cell(method, seq, kv_seq, heads, kv_heads, head_dim, batch, dtype, causal, budget, param, workload, grid, device, repeats, warmup, seed, error_rows)
    store = RunStore(out, run_id, label=f"kernel-{cell.method}", config={"command": "kernel", "cell": cell.__dict__})
    record = store.append(run_cell(cell))
    if as_json:
        console.print_json(json.dumps(record, default=str))
    else:
        console.print(render_record(record))
        console.print(f"recorded in {store.path}", style="dim")
    if record["status"] == "failed":
        if record.get("error_kind") in ("unavailable", "input"):
            raise SpbenchError(record["error"])
        err_console.print(f"[red]cell failed:[/red] {record['error']}")
        raise typer.Exit(1)
    if record["status"] == "invalid":
        err_console.print(f"[red]invalid output:[/red] {record['error']}")
        raise typer.Exit(1)


def register(app: typer.Typer, suite_app: typer.Typer) -> None:
    app.command("kernel")(friendly_errors(kernel))
