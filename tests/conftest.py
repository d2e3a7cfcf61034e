"""Test helpers shared across the test folders (tests/support) are importable by module name."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
