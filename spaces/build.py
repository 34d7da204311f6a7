"""`make space`: assemble a deployable Hugging Face Space folder (python -m spaces.build OUT)."""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
PROJECT = ["agent", "adapters", "feedback", "lab", "ui", "web", "cli", "scripts", "app.py", "kaizen_chat.py",
           "pyproject.toml"]  # scripts: the llama.cpp patch agent/llama_build.py checks a build against
BUNDLE = ["README.md", "requirements.txt", "space_app.py"]


def build(out: str | Path) -> Path:
    import gradio

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
    readme = out / "README.md"
    text = re.sub(r"(?m)^sdk_version: .*$", f"sdk_version: {gradio.__version__}", readme.read_text())
    readme.write_text(text)
    return out


if __name__ == "__main__":
    path = build(sys.argv[1] if len(sys.argv) > 1 else "dist/space")
    print(f"Space bundle ready in {path}")
