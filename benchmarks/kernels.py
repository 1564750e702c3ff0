"""Compiled kernels vs NumPy/SciPy/sklearn baselines; same as ``edgeloop bench kernels``."""
from edgeloop.bench.kernels import main

if __name__ == "__main__":
    raise SystemExit(main())
