"""The kernel suite: methods x budgets x shapes, one :class:`KernelCell` each.

``spbench suite kernel`` sweeps every selected method at every budget on
every shape (sequence lengths x head dims x workloads) and records each cell
in a results run (``spbench.results.RunStore``). Choices, documented:

* **Order.** Shape-major: for each (workload, head dim, seq) the Q/K/V inputs
  are generated once and reused by every cell of that shape, and the dense
  timing is measured once (``dense_cache``) and shared, so all speedups of a
  shape divide by the same dense number.
* **Dense baseline.** One record per shape, ``role="baseline"``: the dense
  SDPA backends are timed first (:func:`spbench.bench.dense_baseline`), then
  the fastest one (cuDNN on Hopper, usually; ``dense`` on the CPU) is
  measured as a cell like any method, with ``budget`` empty. Its speedup is
  about 1 (the spread between two timings of the same kernel) and its error
  is the dtype's rounding error: the reference point of every Pareto plot.
  Its ``cell_key`` comes from the shape alone (not from the backend's name,
  which can change between sessions), so resume never re-measures it.
* **Methods.** ``all`` = every registered sparse method; otherwise a comma
  list of names, aliases or ``fnmatch`` globs (``*attention*``); a glob with
  ``+`` composes (``token-sparse+*`` = token-sparse around every other
  sparse method). A dense method named explicitly runs once per shape, with
  no budget. A method that does not support a shape (head dim) is skipped
  there with a note; one that supports none of the shapes is dropped with a
  note when it came from ``all`` or a glob, and is an error when it was
  named. The sweep saved with the run lists the methods the patterns
  resolved to (:func:`pin_methods`), so repeating it from its file runs the
  same methods even after new ones are registered.
* **Knobs.** ``--param name=value`` goes to every selected method that has
  that knob (an error if none has it); ``--param method.name=value`` to one
  method only. Bad knobs are errors before any work.
* **Resilience.** A cell that fails (OOM, an exception, NaN output) is
  recorded with its reason and the sweep goes on. A re-run of the same run
  id skips recorded cells (``RunStore.done_keys``), and a shape whose cells
  are all recorded is not even generated. A killed process loses at most
  the cell in flight; Ctrl-C (``KeyboardInterrupt``) propagates to the CLI.
* **Time cap.** ``max_seconds`` stops between cells: before a cell, when the
  time already spent plus the longest cell so far (a conservative guess of
  the next one) would pass the cap. The run stays resumable.
* **Config.** A sweep is a :class:`Sweep`: defaults, then a TOML file, then
  the CLI options that were given (each given option replaces the file's
  value; ``--param`` values are merged key by key). The resolved sweep goes
  into run.json and ``sweep.toml`` in the run folder; resuming a run without
  ``--config`` starts from that file, and a resumed run must keep its sweep
  (changing it is an error that names the keys; use a new run id).
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from spbench.errors import SpbenchError
from spbench.parsing import parse_budget, parse_grid, parse_list, parse_seq, parse_value
from spbench.results import cell_key

SWEEP_FILE = "sweep.toml"
DEFAULT_BUDGETS = (0.05, 0.1, 0.2, 0.3, 0.5)
# On a GPU the reference shapes; on the CPU something that finishes in minutes.
GPU_DEFAULTS = {"seq": [32_000, 110_000], "heads": 40}
CPU_DEFAULTS = {"seq": [4_000], "heads": 4}


@dataclass
class Sweep:
    """A resolved sweep: every value that defines its cells (see module docstring)."""

    methods: list[str] = field(default_factory=lambda: ["all"])
    budgets: list[float] = field(default_factory=lambda: list(DEFAULT_BUDGETS))
    seq: list[int] = field(default_factory=list)  # [] until resolved: depends on the device
    head_dim: list[int] = field(default_factory=lambda: [128])
    workload: list[str] = field(default_factory=lambda: ["video"])
    heads: int | None = None
    kv_heads: int | None = None
    batch: int = 1
    dtype: str = "auto"
    causal: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    grid: tuple[int, int, int] | None = None
    device: str = "auto"
    # 5 repeats + 2 warm-ups keep a 6-method x 5-budget x {32k, 110k} sweep near 5 minutes on an H100.
    repeats: int = 5
    warmup: int = 2
    seed: int = 0
    error_rows: int = 256
    baseline: bool = True

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["grid"] = "x".join(map(str, self.grid)) if self.grid else None
        return out


SWEEP_KEYS = tuple(f.name for f in fields(Sweep))
LIST_KEYS = ("methods", "budgets", "seq", "head_dim", "workload")


# -- configuration -------------------------------------------------------------


def _as_list(key: str, value: Any) -> list[Any]:
    if isinstance(value, str):
        items = parse_list(value)
    elif isinstance(value, (list, tuple)):
        items = [v for item in value for v in (parse_list(item) if isinstance(item, str) else [item])]
    else:
        items = [value]
    if not items:
        raise SpbenchError(f"{key} is empty")
    return items


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SpbenchError(f"{key} must be an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise SpbenchError(f"{key} must be an integer, got {value!r}") from None
    if number <= 0 and key not in ("warmup", "seed"):
        raise SpbenchError(f"{key} must be positive, got {value!r}")
    if number < 0:
        raise SpbenchError(f"{key} must not be negative, got {value!r}")
    return number


def _normalise(key: str, value: Any) -> Any:
    """One config value, from the TOML file or the CLI, in its canonical form."""
    if key == "methods":
        return list(dict.fromkeys(str(m).strip() for m in _as_list(key, value)))
    if key == "budgets":
        return sorted(set(parse_budget(b) for b in _as_list(key, value)))
    if key == "seq":
        return list(dict.fromkeys(parse_seq(s) for s in _as_list(key, value)))
    if key == "head_dim":
        return list(dict.fromkeys(_positive_int("head_dim", d) for d in _as_list(key, value)))
    if key == "workload":
        return list(dict.fromkeys(str(w) for w in _as_list(key, value)))
    if key in ("heads", "kv_heads", "batch", "repeats", "warmup", "seed", "error_rows"):
        return None if value is None else _positive_int(key, value)
    if key in ("causal", "baseline"):
        if isinstance(value, str):
            value = parse_value(value)
        if not isinstance(value, bool):
            raise SpbenchError(f"{key} must be true or false, got {value!r}")
        return value
    if key in ("dtype", "device"):
        return str(value)
    if key == "grid":
        return None if value in (None, "") else parse_grid(value)
    if key == "params":
        return _normalise_params(value)
    raise SpbenchError(f"unknown sweep key {key!r}")


def _normalise_params(value: Any) -> dict[str, Any]:
    """``{knob: v}`` for every method and ``{method: {knob: v}}`` for one; lists of name=value too."""
    if isinstance(value, (list, tuple)):
        value = parse_params_items(value)
    if not isinstance(value, dict):
        raise SpbenchError(f"params must be a table of knob = value, got {value!r}")
    out: dict[str, Any] = {}
    for name, v in value.items():
        name = str(name).strip()
        if isinstance(v, dict):
            out[name] = {str(k).strip().replace("-", "_"): v2 for k, v2 in v.items()}
        else:
            out[name.replace("-", "_")] = v
    return out


def parse_params_items(items: Iterable[str]) -> dict[str, Any]:
    """``--param tau=0.5`` (every method with a knob tau) and ``--param psa.tau=0.5`` (psa only)."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        method, dot, knob = name.strip().rpartition(".")
        if not sep or not knob or (dot and not method):
            raise SpbenchError(f"malformed --param {item!r}: expected knob=value or method.knob=value")
        knob = knob.strip().replace("-", "_")  # knobs are identifiers; method names keep their '-'
        if dot:
            out.setdefault(method.strip(), {})[knob] = parse_value(text)
        else:
            out[knob] = parse_value(text)
    return out


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a sweep TOML file into normalised values (unknown keys are errors)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpbenchError(f"sweep config {path} does not exist") from None
    except OSError as exc:
        raise SpbenchError(f"cannot read sweep config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpbenchError(f"sweep config {path} is not valid TOML: {exc}") from None
    data = data.get("sweep", data)  # a [sweep] table or top-level keys
    out: dict[str, Any] = {}
    for key, value in data.items():
        norm = key.replace("-", "_")
        if norm not in SWEEP_KEYS:
            raise SpbenchError(f"unknown key {key!r} in {path}; known keys: {', '.join(SWEEP_KEYS)}")
        out[norm] = _normalise(norm, value)
    return out


def resolve_sweep(file_values: dict[str, Any] | None = None, cli_values: dict[str, Any] | None = None) -> Sweep:
    """Defaults, then the file, then the given CLI options; device-dependent defaults filled in."""
    from spbench.bench import resolve_device

    values: dict[str, Any] = {}
    for source in (file_values or {}, cli_values or {}):
        for key, value in source.items():
            if value is None:
                continue
            value = _normalise(key, value) if source is cli_values else value
            if key == "params" and "params" in values:
                merged = {k: dict(v) if isinstance(v, dict) else v for k, v in values["params"].items()}
                for k, v in value.items():
                    if isinstance(v, dict) and isinstance(merged.get(k), dict):
                        merged[k].update(v)
                    else:
                        merged[k] = v
                value = merged
            values[key] = value
    sweep = Sweep(**values)
    dev = resolve_device(sweep.device)
    sweep.device = str(dev)
    defaults = GPU_DEFAULTS if dev.type == "cuda" else CPU_DEFAULTS
    if not sweep.seq:
        sweep.seq = list(defaults["seq"])
    if sweep.heads is None:
        sweep.heads = defaults["heads"]
    if sweep.dtype == "auto":
        sweep.dtype = "bf16" if dev.type == "cuda" else "fp32"
    if sweep.grid is not None and len(sweep.seq) > 1:
        raise SpbenchError("--grid fixes one latent grid: give a single --seq with it")
    return sweep


def _toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "_-" for c in key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpbenchError(f"cannot write {value} to TOML")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise SpbenchError(f"cannot write {value!r} to TOML")


def dump_toml(sweep: Sweep) -> str:
    """The sweep as TOML (None values left out: omission means the default None)."""
    data = sweep.to_dict()
    params = data.pop("params")
    lines = ["# spbench suite kernel sweep: `spbench suite kernel --config THIS_FILE` repeats it", ""]
    for key, value in data.items():
        if value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    flat = {k: v for k, v in params.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in params.items() if isinstance(v, dict)}
    if flat or tables:
        lines += ["", "# knobs for every method that has them", "[params]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in flat.items()]
        for method, knobs in tables.items():
            lines += ["", f"# knobs for {method} only", f"[params.{_toml_key(method)}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in knobs.items()]
    text = "\n".join(lines) + "\n"
    # The file must read back to exactly this sweep, or it cannot repeat it.
    back = tomllib.loads(text)
    expect = {k: v for k, v in sweep.to_dict().items() if v is not None and k != "params"}
    got = {k: v for k, v in back.items() if k != "params"}
    if got != expect or back.get("params", {}) != params:
        raise SpbenchError("internal error: the sweep does not round-trip through TOML")
    return text


def sweep_differences(a: Sweep, b: Sweep) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [k for k in SWEEP_KEYS if da.get(k) != db.get(k)]


# -- methods -------------------------------------------------------------------


def _names_and_aliases(sparse_only: bool) -> dict[str, str]:
    """Every loadable name and alias -> canonical name."""
    from spbench.registry import entries

    table: dict[str, str] = {}
    for entry in entries().values():
        if entry.cls is None or (sparse_only and not entry.cls.sparse):
            continue
        table[entry.name] = entry.name
        for alias in entry.cls.aliases:
            table.setdefault(alias, entry.name)
    return table


def _glob(pattern: str, sparse_only: bool) -> list[str]:
    table = _names_and_aliases(sparse_only)
    return sorted({table[n] for n in table if fnmatch.fnmatchcase(n, pattern.lower())})


def expand_methods(patterns: list[str]) -> list[tuple[str, bool]]:
    """(canonical method name, named explicitly?) for each selected method, in order, no repeats."""
    from spbench.registry import canonical_name, get_class, method_names

    out: dict[str, bool] = {}

    def add(name: str, explicit: bool) -> None:
        out[name] = out.get(name, False) or explicit

    for raw in patterns:
        pattern = raw.strip().lower()
        if not pattern:
            continue
        if pattern == "all":
            names = method_names(sweepable=True)
            if not names:
                raise SpbenchError("--methods all: no sparse method is registered")
            for name in names:
                add(name, False)
            continue
        is_glob = any(c in pattern for c in "*?[")
        if "+" in pattern:
            head, _, tail = pattern.partition("+")
            if any(c in head for c in "*?["):
                outers = [n for n in _glob(head, True) if hasattr(get_class(n), "compose")]
            else:
                outers = [canonical_name(head)]
            if any(c in tail for c in "*?["):
                inners = [n for n in _glob(tail, True) if not hasattr(get_class(n), "compose")]
            else:
                inners = [canonical_name(tail.partition("+")[0]) + ("+" + tail.partition("+")[2] if "+" in tail else "")]
            combos = [f"{o}+{i}" for o in outers for i in inners if o != i.partition("+")[0]]
            if not combos:
                raise SpbenchError(f"--methods {raw!r} matches no composable method pair")
            for name in combos:
                if not hasattr(get_class(name.partition("+")[0]), "compose"):
                    raise SpbenchError(f"method {name.partition('+')[0]!r} does not take an inner method (in {raw!r})")
                add(name, not is_glob)
            continue
        if is_glob:
            names = _glob(pattern, sparse_only=False)
            if not names:
                raise SpbenchError(f"--methods {raw!r} matches no registered method; known: {', '.join(method_names())}")
            for name in names:
                add(name, False)
            continue
        add(canonical_name(pattern), True)
    if not out:
        raise SpbenchError("--methods is empty")
    return list(out.items())


def _knob_names(method: str) -> set[str]:
    from spbench.registry import get_class

    names: set[str] = set()
    for part in method.split("+"):
        names |= set(get_class(part).all_knobs())
    return names


def method_params(params: dict[str, Any], methods: list[str]) -> dict[str, dict[str, Any]]:
    """The knobs each method gets (see module docstring); errors for knobs nobody takes."""
    from spbench.registry import canonical_name

    per: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for name, value in params.items():
        if isinstance(value, dict):
            continue
        takers = [m for m in methods if name in _knob_names(m)]
        if not takers:
            raise SpbenchError(f"--param {name}: no selected method has a knob {name!r}")
        for m in takers:
            per[m][name] = value
    for name, value in params.items():
        if not isinstance(value, dict):
            continue
        head, plus, tail = name.partition("+")
        target = canonical_name(head) + (plus + tail if plus else "")
        if target not in per:
            raise SpbenchError(f"--param {name}.*: method {name!r} is not in this sweep ({', '.join(methods)})")
        per[target].update(value)
    return per


# -- the cells -------------------------------------------------------------------


@dataclass
class PlannedCell:
    """One cell of the sweep, before it runs."""

    cell: Any  # spbench.bench.KernelCell
    role: str  # "baseline" or "method"
    key: str

    def describe(self) -> str:
        c = self.cell
        what = "dense baseline" if self.role == "baseline" else c.method + (f" b={c.budget:g}" if c.budget is not None else "")
        return f"{what}  {c.workload} L={c.seq} Hq={c.heads} d={c.head_dim}"


def baseline_key(cell) -> str:
    """The baseline's key: its shape, error rows and timing-free settings; not the backend's name."""
    return cell_key({"baseline": cell.shape_key(), "error_rows": cell.error_rows})


def plan_cells(sweep: Sweep, notes: list[str] | None = None) -> list[PlannedCell]:
    """Every cell of the sweep, shape-major, validated before any work."""
    from spbench.bench import KernelCell, validate
    from spbench.registry import get_class, get_method

    notes = notes if notes is not None else []
    selected = expand_methods(sweep.methods)
    names = [m for m, _ in selected]
    explicit = dict(selected)
    knobs = method_params(sweep.params, names)
    sparse = {m: get_class(m.partition("+")[0]).sparse for m in names}
    # Bad knobs, unknown names and bad budgets fail here, before any work.
    for m in names:
        for budget in sweep.budgets if sparse[m] else [None]:
            extra = {"budget": budget} if budget is not None else {}
            get_method(m, causal=sweep.causal, **knobs[m], **extra)
    cells: list[PlannedCell] = []
    skipped: dict[str, list[str]] = {}
    for workload in sweep.workload:
        for head_dim in sweep.head_dim:
            for seq in sweep.seq:
                shape = dict(
                    seq=seq,
                    workload=workload,
                    batch=sweep.batch,
                    heads=sweep.heads,
                    kv_heads=sweep.kv_heads,
                    head_dim=head_dim,
                    dtype=sweep.dtype,
                    causal=sweep.causal,
                    device=sweep.device,
                    grid=sweep.grid,
                    seed=sweep.seed,
                    repeats=sweep.repeats,
                    warmup=sweep.warmup,
                    error_rows=sweep.error_rows,
                )
                base = KernelCell(method="dense", **shape)
                validate(base)  # shape problems (too large for the CPU, GQA) are errors
                if sweep.baseline:
                    cells.append(PlannedCell(base, "baseline", baseline_key(base)))
                for m in names:
                    for budget in sweep.budgets if sparse[m] else [None]:
                        cell = KernelCell(method=m, budget=budget, params=dict(knobs[m]), **shape)
                        try:
                            validate(cell)
                        except SpbenchError as exc:
                            skipped.setdefault(m, []).append(str(exc))
                            break
                        cells.append(PlannedCell(cell, "method", cell.key()))
    planned = {pc.cell.method for pc in cells}
    for m, why in skipped.items():
        if m not in planned and explicit[m]:
            raise SpbenchError(why[0])
        notes.append(f"skipped {m} on {len(why)} shape(s): {why[0]}")
    seen: set[str] = set()
    unique = []
    for pc in cells:
        if pc.key not in seen:
            seen.add(pc.key)
            unique.append(pc)
    return unique


def pin_methods(sweep: Sweep, cells: list[PlannedCell]) -> Sweep:
    """The sweep with ``methods`` = the canonical names that got cells (what to save and compare)."""
    names = list(dict.fromkeys(pc.cell.method for pc in cells if pc.role == "method"))
    return replace(sweep, methods=names or list(sweep.methods))


# -- running ---------------------------------------------------------------------


def _failed_record(pc: PlannedCell, error: str, kind: str) -> dict[str, Any]:
    record = {"suite": "kernel", "cell_key": pc.key, **asdict(pc.cell), "status": "failed", "error": error, "error_kind": kind}
    record["grid"] = list(pc.cell.grid) if pc.cell.grid else None
    record["started"] = record["finished"] = time.time()
    return record


def run_planned(pc: PlannedCell, inputs, dense_cache: dict[str, Any]) -> dict[str, Any]:
    """Measure one planned cell; never raises for a failure of the cell."""
    from spbench.bench import dense_baseline, resolve_device, run_cell

    cell = pc.cell
    if pc.role == "baseline":
        backend = "dense"
        if inputs is not None:
            try:
                backend = dense_baseline(cell, inputs, resolve_device(cell.device), dense_cache)["fastest"]
            except Exception:  # noqa: BLE001 - run_cell below measures again and records the reason
                pass
        cell = replace(cell, method=backend, budget=None, params={})
    try:
        record = run_cell(cell, dense_cache=dense_cache, inputs=inputs)
    except SpbenchError as exc:  # validated up front; kept so one cell can never stop the sweep
        record = _failed_record(pc, str(exc), "input")
    record["cell_key"] = pc.key
    record["role"] = pc.role
    return record


@dataclass
class SweepOutcome:
    total: int
    already_done: int
    ran: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    stopped: str | None = None  # why the sweep stopped early ("time cap", "device error"), None when complete
    detail: str | None = None
    seconds: float = 0.0


class SweepProgress:
    """What the sweep reports while it runs (the CLI renders it with rich)."""

    def start(self, total: int, done: int) -> None: ...

    def cell_started(self, pc: PlannedCell, index: int) -> None: ...

    def cell_finished(self, pc: PlannedCell, record: dict[str, Any]) -> None: ...

    def note(self, text: str) -> None: ...


def device_error(device) -> str | None:
    """None while the device still works, else the error that broke it (CUDA errors are sticky)."""
    if device.type != "cuda":
        return None
    import torch

    try:
        torch.cuda.synchronize(device)
        torch.ones(1, device=device).add_(1).item()
    except Exception as exc:  # noqa: BLE001 - any failure here means the context is gone
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return None


def run_sweep(
    cells: list[PlannedCell],
    store,
    progress: SweepProgress | None = None,
    max_seconds: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    retry_failed: bool = False,
) -> SweepOutcome:
    """Run the cells not yet recorded in ``store``, shape by shape.

    ``retry_failed`` measures failed and invalid cells again (their new
    records supersede the old ones in reports). After a failed cell on a
    GPU the device is checked: a CUDA error that poisons the process's
    context (an illegal memory access) would fail every later cell, so the
    sweep stops instead (``stopped="device error"``); a new process resumes.
    """
    from spbench.bench import _free, make_inputs, resolve_device

    progress = progress or SweepProgress()
    done = store.done_keys(include_failed=not retry_failed)
    pending = [pc for pc in cells if pc.key not in done]
    outcome = SweepOutcome(total=len(cells), already_done=len(cells) - len(pending))
    progress.start(outcome.total, outcome.already_done)
    t0 = clock()
    shapes: dict[str, list[PlannedCell]] = {}
    for pc in pending:
        shapes.setdefault(str(sorted(pc.cell.shape_key().items())), []).append(pc)
    index = outcome.already_done
    longest = 0.0
    for group in shapes.values():
        first = group[0].cell
        device = resolve_device(first.device)
        try:
            inputs = make_inputs(first, device)
        except Exception as exc:  # noqa: BLE001 - each cell then records the reason itself
            progress.note(f"could not build the inputs of {group[0].describe().split('  ', 1)[1]}: {exc}")
            inputs = None
        dense_cache: dict[str, Any] = {}
        for pc in group:
            elapsed = clock() - t0
            if max_seconds is not None and elapsed + longest > max_seconds:
                outcome.stopped = "time cap"
                break
            index += 1
            progress.cell_started(pc, index)
            started = clock()
            record = store.append(run_planned(pc, inputs, dense_cache))
            longest = max(longest, clock() - started)
            outcome.ran += 1
            outcome.counts[record["status"]] = outcome.counts.get(record["status"], 0) + 1
            progress.cell_finished(pc, record)
            if record["status"] == "failed":
                broken = device_error(device)
                if broken:
                    outcome.stopped, outcome.detail = "device error", broken
                    break
        del inputs
        if outcome.stopped != "device error":
            _free(device)
        if outcome.stopped:
            break
    outcome.seconds = clock() - t0
    return outcome

