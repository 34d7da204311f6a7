"""`make space`: assemble a deployable Hugging Face Space folder (python -m spaces.build OUT)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
# The image runs the project's `make install` (spaces/Dockerfile): the Makefile and scripts/ (the llama.cpp build
# and its patches) come too.
PROJECT = ["agent", "adapters", "feedback", "lab", "ui", "web", "cli", "scripts", "app.py", "kaizen_chat.py",
           "pyproject.toml", "Makefile"]
BUNDLE = ["README.md", "Dockerfile", "space_app.py"]


def build(out: str | Path) -> Path:
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in PROJECT:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, out / name, ignore=ignore)
        else:
            shutil.copy2(src, out / name)
    for name in BUNDLE:
        shutil.copy2(HERE / name, out / name)
    return out


if __name__ == "__main__":
    path = build(sys.argv[1] if len(sys.argv) > 1 else "dist/space")
    print(f"Space bundle ready in {path}")
