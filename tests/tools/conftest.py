"""tools/ holds scripts, not a package: their folder goes on the path so that tests import them."""

import sys
from pathlib import Path

TOOLS_DIR = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS_DIR))
