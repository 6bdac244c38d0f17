import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import torch

import spbench
from spbench import registry
from spbench.errors import SpbenchError

ROOT = Path(__file__).resolve().parents[1]


def test_builtin_table_matches_pyproject_entry_points():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = meta["project"]["entry-points"]["spbench.methods"]
    assert declared == registry.BUILTIN


def test_every_builtin_loads_and_has_metadata():
    for name, entry in registry.entries(refresh=True).items():
        if entry.source != "spbench":
            continue
        assert entry.cls is not None, f"{name}: {entry.error}"
        assert entry.cls.name == name
        assert entry.cls.summary


def test_aliases_and_suggestions():
    assert spbench.get_method("exact").name == "reference"
    assert spbench.get_method("SDPA").name == "dense"
    with pytest.raises(SpbenchError, match="did you mean"):
        spbench.get_method("refrence")
    with pytest.raises(SpbenchError, match="no knob"):
        spbench.get_method("reference", chunkk=3)
    with pytest.raises(SpbenchError, match="budget"):
        spbench.get_method("dense", budget=0)
    with pytest.raises(SpbenchError, match="inner"):
        spbench.get_method("dense+reference")


PLUGIN = '''
import torch
from spbench import Method, Plan, Knob

class HalfMethod(Method):
    """A third-party method: attention output scaled by a knob (for the registry test)."""
    name = "tiny-plugin"
    aliases = ("tiny",)
    summary = "test plugin"
    knobs = {"factor": Knob(0.5, "output scale")}
    def plan(self, q, k, v):
        return Plan.dense(q.shape[2], k.shape[2])
    def run(self, q, k, v, plan):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v) * self.params["factor"]

class Broken(Method):
    pass

raise_later = None
'''


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """A separate tiny distribution, installed as metadata on sys.path (no pip needed)."""
    (tmp_path / "tiny_spbench_plugin.py").write_text(PLUGIN)
    info = tmp_path / "tiny_spbench_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-spbench-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [spbench.methods]
            tiny-plugin = tiny_spbench_plugin:HalfMethod
            broken-plugin = tiny_spbench_plugin:DoesNotExist
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.entries(refresh=True)
    yield tmp_path
    monkeypatch.undo()
    registry.entries(refresh=True)


def test_third_party_method_through_entry_points(plugin_dist):
    entries = registry.entries()
    assert entries["tiny-plugin"].source == "tiny-spbench-plugin"
    m = spbench.get_method("tiny", factor=0.25)
    q = torch.randn(1, 2, 8, 16)
    out = m(q, q, q)
    assert torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, q, q) * 0.25)
    # A broken plugin is listed with its error, and does not break the rest.
    assert entries["broken-plugin"].cls is None and "DoesNotExist" in entries["broken-plugin"].error
    with pytest.raises(SpbenchError, match="failed to load"):
        spbench.get_method("broken-plugin")


def test_methods_command_lists_plugin(plugin_dist):
    env = {"PYTHONPATH": str(plugin_dist), "COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "spbench.cli", "methods"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("tiny-plugin", "reference", "cudnn", "broken-plugin", "chunk=1024"):
        assert name in out.stdout
