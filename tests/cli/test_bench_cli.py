"""`edgeloop bench kernels` without the `bench` extra: one line naming the extra to install, exit != 0."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A meta-path finder that makes scikit-learn unimportable in the child, as if it were not installed.
BLOCKER = textwrap.dedent("""
    import sys
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name == "sklearn" or name.startswith("sklearn."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, Blocker())
""")


@pytest.mark.parametrize("entry", [
    "from edgeloop.cli import main; sys.exit(main(['bench', 'kernels', '--quick', '--check']))",
    f"sys.argv = ['kernels.py', '--quick']; import runpy; runpy.run_path({str(ROOT / 'benchmarks' / 'kernels.py')!r}, run_name='__main__')",
])
def test_bench_kernels_without_the_extra_says_what_to_install(entry):
    proc = subprocess.run([sys.executable, "-c", BLOCKER + entry], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "pip install 'edgeloop[bench]'" in lines[0] and "sklearn" in lines[0]
    assert proc.stdout == ""  # refused before any case ran
