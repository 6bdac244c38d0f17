"""Built-in attention methods (installed as spbench.methods)."""
