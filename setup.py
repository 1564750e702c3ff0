"""Builds edgeloop._native: the Cython numeric core in native/.

Compiled with -O3; with OpenMP where the compiler supports it (probed by compiling
a tiny program), serially where it does not.  BLAS comes from scipy.linalg.cython_blas
through the shared wrappers of native/_blas.pxd, so no BLAS headers or libraries are needed
at build time.  Cython >= 3.1 is required (prange's use_threads_if).
"""
import os
import shutil
import subprocess
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

NATIVE_MODULES = ["_linalg", "_stats", "_placement", "_features"]


def _compiler_supports_openmp() -> bool:
    """Try to compile and link a trivial OpenMP program with the default C compiler."""
    if os.environ.get("EDGELOOP_NO_OPENMP"):
        return False
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return False
    src = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as fh:
            fh.write(src)
        try:
            result = subprocess.run(
                [cc, "-fopenmp", path, "-o", os.path.join(tmp, "probe")],
                capture_output=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return result.returncode == 0


def _extensions():
    openmp = _compiler_supports_openmp()
    compile_args = ["-O3"]
    link_args = []
    if openmp:
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    print(f"edgeloop: building native core with OpenMP={'on' if openmp else 'off'}", file=sys.stderr)
    exts = [
        Extension(
            f"edgeloop._native.{name}",
            [f"native/{name}.pyx"],
            include_dirs=[numpy.get_include(), "native"],
            depends=["native/_blas.pxd", "native/edgeloop_clones.h"],  # shared by every module
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
        for name in NATIVE_MODULES
        if os.path.exists(f"native/{name}.pyx")
    ]
    return cythonize(
        exts,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
        compile_time_env={"EDGELOOP_OPENMP": openmp},
    )


setup(ext_modules=_extensions())
