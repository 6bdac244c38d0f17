"""spbench: the reference harness for sparse attention."""

from spbench.errors import SpbenchError
from spbench.method import Knob, Method
from spbench.plan import Plan
from spbench.registry import get_method, method_names

__version__ = "0.1.0"

__all__ = ["Knob", "Method", "Plan", "SpbenchError", "get_method", "method_names", "__version__"]
