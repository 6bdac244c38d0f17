"""Count the aten ops and Triton launches of one rectified plan on the CPU (TRITON_INTERPRET=1; ops inside interpreted kernels are not counted). --old: the torch planner."""
import os, sys, time, collections
os.environ.setdefault("TRITON_INTERPRET", "1")
import torch
from torch.utils._python_dispatch import TorchDispatchMode
import spbench
from spbench.workloads import make_qkv

VIEWS = {"view", "_unsafe_view", "expand", "slice", "select", "transpose", "t", "permute", "unsqueeze", "squeeze", "as_strided", "alias", "detach", "_reshape_alias", "unbind", "split", "lift_fresh", "reshape"}

import triton.runtime.interpreter as _I
_IN = [0]
_orig_run = _I.InterpretedFunction.run
def _run(self, *a, **kw):
    LOG[0].ops.append("TRITON:" + getattr(self.fn, "__name__", "?")) if LOG[0] else None
    _IN[0] += 1
    try:
        return _orig_run(self, *a, **kw)
    finally:
        _IN[0] -= 1
_I.InterpretedFunction.run = _run
LOG = [None]

class Log(TorchDispatchMode):
    def __init__(self):
        super().__init__(); self.ops = []
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in VIEWS and not _IN[0]:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))

def main():
    seq = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
    heads = 2
    verbose = "-v" in sys.argv
    q, k, v = make_qkv("video", 1, heads, heads, seq, 128, dtype=torch.float32, device="cpu")
    for budget in (0.05, 0.1, 0.2):
        m = spbench.get_method("rectified", budget=budget)
        m.plan(q, k, v)  # warm caches
        if "--old" in sys.argv:
            m._fused = lambda device: False
        with Log() as log:
            LOG[0] = log
            m.plan(q, k, v)
        LOG[0] = None
        c = collections.Counter(log.ops)
        t = []
        for _ in range(5):
            t0 = time.perf_counter(); m.plan(q, k, v); t.append((time.perf_counter() - t0) * 1e3)
        print(f"budget {budget}: {len(log.ops)} ops, cpu plan {sorted(t)[2]:.2f} ms")
        if verbose and budget == 0.1:
            print(" ".join(log.ops)); print(c.most_common())
main()
