"""Commands: ``suite vbench``, ``vbench-env install|check``, ``capture``."""

from __future__ import annotations

from typing import List, Optional

import typer

from spbench.cli_common import console, friendly_errors
from spbench.errors import SpbenchError
from spbench.parsing import parse_list

env_app = typer.Typer(help="The isolated VBench environment (VBench pins transformers 4.33 and numpy<2).", no_args_is_help=True)


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in parse_list(text)]
    except ValueError:
        raise SpbenchError(f"{what} must be comma-separated integers, got {text!r}") from None


def suite_vbench(
    model: str = typer.Option(..., "--model", help="diffusers pipeline: local folder or a Hugging Face id in the local cache"),
    methods: str = typer.Option("all", "--methods", help="comma list of methods, globs, or 'all' sparse methods"),
    budgets: str = typer.Option("0.15", "--budgets", help="comma list of target densities"),
    param: Optional[List[str]] = typer.Option(None, "--param", help="knob=value or method.knob=value (repeatable)"),
    prompts: str = typer.Option("standard", "--prompts", help="'standard' (VBench's per-dimension lists) or a file, one prompt a line"),
    dimensions: str = typer.Option("temporal_flickering", "--dimensions", help="comma list of VBench dimensions"),
    max_prompts: Optional[int] = typer.Option(None, "--max-prompts", help="keep the first N prompts (quick runs)"),
    videos_per_prompt: int = typer.Option(1, "--videos-per-prompt", help="videos per prompt (VBench uses 5)"),
    seed: int = typer.Option(0, "--seed", help="video i of a prompt uses seed+i"),
    height: Optional[int] = typer.Option(None, "--height"),
    width: Optional[int] = typer.Option(None, "--width"),
    frames: Optional[int] = typer.Option(None, "--frames"),
    steps: Optional[int] = typer.Option(None, "--steps", help="denoising steps (pipeline default if omitted)"),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="guidance scale (pipeline default if omitted)"),
    fps: int = typer.Option(16, "--fps", help="frame rate of the saved mp4 files"),
    dense_steps: float = typer.Option(0.25, "--dense-steps", help="dense warm-up: fraction (<1) or number of first steps"),
    dense_layers: int = typer.Option(1, "--dense-layers", help="first M self-attention layers always dense"),
    reorder: str = typer.Option("hilbert", "--reorder", help="token order the method sees: hilbert or none"),
    warmup_steps: int = typer.Option(2, "--warmup-steps", help="steps of the discarded warm-up generation (0: none)"),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32"),
    offload: bool = typer.Option(False, "--offload", help="enable_model_cpu_offload (large models on small GPUs)"),
    lpips: bool = typer.Option(True, "--lpips/--no-lpips", help="LPIPS when its weights are local"),
    vbench: bool = typer.Option(True, "--vbench/--no-vbench", help="score with VBench in its own environment"),
    vbench_env: Optional[str] = typer.Option(None, "--vbench-env", help="VBench environment folder (default $SPBENCH_VBENCH_VENV or ~/.cache/spbench/vbench-venv)"),
    out: str = typer.Option("results", "--out", help="results root"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="resume or name a run"),
) -> None:
    """Generate videos dense and with each method x budget; fidelity, latency, VBench scores."""
    from spbench.suites.kernel import parse_params_items
    from spbench.suites.vbench import VBenchSweep, run_vbench

    sweep = VBenchSweep(
        model=model,
        methods=parse_list(methods),
        budgets=parse_list(budgets),
        params=parse_params_items(param or []),
        prompts=prompts,
        dimensions=parse_list(dimensions),
        max_prompts=max_prompts,
        videos_per_prompt=videos_per_prompt,
        seed=seed,
        height=height,
        width=width,
        frames=frames,
        steps=steps,
        guidance=guidance,
        fps=fps,
        dense_steps=dense_steps,
        dense_layers=dense_layers,
        reorder=reorder,
        warmup_steps=warmup_steps,
        device=device,
        dtype=dtype,
        offload=offload,
        lpips=lpips,
        vbench=vbench,
        vbench_env=vbench_env,
        out=out,
        run_id=run_id,
    )
    store, progress = run_vbench(sweep, echo=lambda s: console.print(s, highlight=False, markup=False))
    console.print(f"run {store.run_id}: {progress.generated} video(s) generated, {progress.skipped} resumed, {progress.failed} failed -> {store.path}")


def env_install(
    path: Optional[str] = typer.Option(None, "--path", help="where to create it (default $SPBENCH_VBENCH_VENV or ~/.cache/spbench/vbench-venv)"),
    package: Optional[List[str]] = typer.Option(None, "--package", help="pip requirement to install instead of the defaults (repeatable)"),
) -> None:
    """Create (or complete) the VBench virtual environment; takes a few minutes."""
    from spbench.vbench_env import default_path, install

    console.print(f"installing VBench into {path or default_path()} ...")
    where = install(path, packages=list(package) if package else None)
    console.print(f"VBench environment ready: {where}")


def env_check(path: Optional[str] = typer.Option(None, "--path")) -> None:
    """Import vbench in the environment and print the versions."""
    from spbench.vbench_env import check, require

    where = require(path)
    for key, value in check(where).items():
        console.print(f"{key}: {value}")


def capture_cmd(
    model: str = typer.Option(..., "--model", help="diffusers pipeline: local folder or a Hugging Face id in the local cache"),
    layers: str = typer.Option(..., "--layers", help="self-attention layers, e.g. 0,10,20"),
    steps: str = typer.Option(..., "--steps", help="denoising steps (0-based), e.g. 0,25,49"),
    out: str = typer.Option(..., "--out", help="folder for the trace files"),
    prompt: str = typer.Option("A cat walks on the grass, realistic style.", "--prompt"),
    seed: int = typer.Option(0, "--seed"),
    height: Optional[int] = typer.Option(None, "--height"),
    width: Optional[int] = typer.Option(None, "--width"),
    frames: Optional[int] = typer.Option(None, "--frames"),
    num_steps: Optional[int] = typer.Option(None, "--num-steps", help="denoising steps of the generation (pipeline default if omitted)"),
    guidance: Optional[float] = typer.Option(None, "--guidance"),
    pass_index: int = typer.Option(0, "--pass", help="forward pass within a step to save (Wan CFG: 0 conditional, 1 unconditional)"),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
    offload: bool = typer.Option(False, "--offload"),
) -> None:
    """Save real Q/K/V (after RoPE) of a generation as safetensors traces."""
    from spbench.capture import CaptureRequest, capture

    req = CaptureRequest(
        model=model,
        layers=_ints(layers, "--layers"),
        steps=_ints(steps, "--steps"),
        out=out,
        prompt=prompt,
        seed=seed,
        height=height,
        width=width,
        frames=frames,
        num_steps=num_steps,
        guidance=guidance,
        device=device,
        dtype=dtype,
        pass_index=pass_index,
        offload=offload,
    )
    capture(req, echo=lambda s: console.print(s, highlight=False, markup=False))


def register(app: typer.Typer, suite_app: typer.Typer) -> None:
    suite_app.command("vbench")(friendly_errors(suite_vbench))
    env_app.command("install")(friendly_errors(env_install))
    env_app.command("check")(friendly_errors(env_check))
    app.add_typer(env_app, name="vbench-env")
    app.command("capture")(friendly_errors(capture_cmd))
