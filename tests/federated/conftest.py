import sys
from pathlib import Path

# the CT loop's fleet helpers (a real coordinator and real edges on 127.0.0.1) are reused here
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ct"))
