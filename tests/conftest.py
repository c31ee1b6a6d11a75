"""Shared test settings: offline, and the real test inputs shipped in tests/assets/."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LDM_PROGRESS", "0")

ASSETS = Path(__file__).resolve().parent / "assets"
