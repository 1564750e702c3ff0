"""The compiled numeric core (Cython sources in ``native/``).

There is deliberately no pure-Python fallback: a missing extension means the
package was not built, and the error says how to build it.
"""

_HOW_TO_BUILD = (
    "edgeloop's compiled core (edgeloop._native.{name}) is not built. "
    "Install the package with `pip install .` (or `pip install -e .`) from the "
    "project root, or build in place with `python setup.py build_ext --inplace`; "
    "a C compiler, Cython, NumPy and SciPy are needed at build time."
)


def load(name: str):
    """Import one compiled submodule, turning a missing build into an actionable error."""
    import importlib

    try:
        return importlib.import_module(f"edgeloop._native.{name}")
    except ImportError as exc:  # pragma: no cover - exercised only on broken installs
        raise ImportError(_HOW_TO_BUILD.format(name=name)) from exc
