import json

import pytest
from typer.testing import CliRunner

from spbench import cli
from spbench.results import load

cli._register_commands()
runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, list(args))


def test_kernel_cpu_json_and_record(tmp_path):
    res = invoke("kernel", "--method", "dense", "--device", "cpu", "--seq", "1k", "--heads", "2", "--head-dim", "32", "--repeats", "2", "--warmup", "1", "--json", "--out", str(tmp_path), "--run-id", "one")
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["status"] == "ok" and record["seq"] == 1000 and record["density"] == 1.0
    assert record["dense_backend"] == "dense" and record["rel_l2"] < 1e-5
    assert record["clock"] == "wall" and record["block_mass_top10"] > 0
    df = load(tmp_path / "one")
    assert len(df) == 1 and df.loc[0, "method"] == "dense"
    # The same run id appends, never overwrites.
    res = invoke("kernel", "--method", "reference", "--device", "cpu", "--seq", "512", "--heads", "2", "--head-dim", "32", "--repeats", "1", "--warmup", "0", "--out", str(tmp_path), "--run-id", "one", "--workload", "random")
    assert res.exit_code == 0, res.output
    assert "speedup" in res.stdout
    assert len(load(tmp_path / "one")) == 2


def test_kernel_records_executor_kernel_and_score_precision(tmp_path):
    # which executor kernel ran (and its launch config) and what the scorer multiplied in are part of the record
    res = invoke("kernel", "--method", "xattention", "--device", "cpu", "--seq", "1k", "--heads", "2", "--head-dim", "64", "--budget", "0.3",
                 "--repeats", "1", "--warmup", "0", "--json", "--param", "score_dtype=fp8", "--out", str(tmp_path), "--run-id", "ex")
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["executor"]["kernel"] == "triton" and "BLOCK_M=" in record["executor"]["config"]  # interpreter (conftest)
    assert record["plan_stats"]["score_precision"] == "fp8"
    res = invoke("kernel", "--method", "dense", "--device", "cpu", "--seq", "512", "--heads", "2", "--head-dim", "32",
                 "--repeats", "1", "--warmup", "0", "--json", "--out", str(tmp_path), "--run-id", "ex")
    assert json.loads(res.stdout)["executor"] is None  # no pyramid-kernel launch
    res = invoke("kernel", "--method", "psa", "--device", "cpu", "--seq", "1k", "--heads", "2", "--head-dim", "64", "--budget", "0.3",
                 "--repeats", "1", "--warmup", "0", "--json", "--param", "score_dtype=input", "--out", str(tmp_path), "--run-id", "ex")
    assert json.loads(res.stdout)["plan_stats"]["score_precision"] == "float32"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "nosuchmethod"], "unknown method"),
        (["--method", "dense", "--seq", "12q"], "malformed sequence length"),
        (["--method", "dense", "--budget", "1.5"], "budget must be in (0, 1]"),
        (["--method", "dense", "--budget", "0"], "budget must be in (0, 1]"),
        (["--method", "dense", "--device", "cuda"], "no CUDA GPU"),
        (["--method", "dense", "--seq", "110k", "--heads", "40"], "too large for the CPU"),
        (["--method", "dense", "--dtype", "fp8"], "unknown dtype"),
        (["--method", "dense", "--heads", "4", "--kv-heads", "3"], "multiple"),
        (["--method", "dense", "--param", "oops"], "malformed --param"),
        (["--method", "reference", "--param", "nope=1"], "no knob"),
        (["--method", "dense", "--workload", "zebra"], "unknown workload"),
        (["--method", "dense", "--workload", "trace:/does/not/exist"], "does not exist"),
    ],
)
def test_kernel_errors_are_one_line_exit_2(tmp_path, args, message):
    if "cuda" in args and cli_has_cuda():
        pytest.skip("a GPU is present")
    defaults = {"--device": "cpu", "--seq": "512", "--heads": "2", "--repeats": "1", "--warmup": "0"}
    extra = [item for key, value in defaults.items() if key not in args for item in (key, value)]
    res = invoke("kernel", *args, *extra, "--out", str(tmp_path))
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_unsupported_head_dim_is_one_line():
    from spbench.registry import method_names

    limited = [n for n in method_names(sparse_only=True) if _head_dims(n)]
    if not limited:
        pytest.skip("no method restricts head dims yet")
    res = invoke("kernel", "--method", limited[0], "--head-dim", "48", "--device", "cpu", "--seq", "512", "--heads", "2")
    assert res.exit_code == 2 and "head dims" in res.output


def _head_dims(name):
    from spbench.registry import get_class

    return get_class(name).head_dims


def cli_has_cuda():
    import torch

    return torch.cuda.is_available()


def test_methods_table():
    res = invoke("methods")
    assert res.exit_code == 0
    assert "reference" in res.stdout and "budget" in res.stdout
