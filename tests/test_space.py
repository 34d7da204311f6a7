"""The Hugging Face Space bundle: front matter, requirements, and an entry that builds the Blocks."""
import os
import subprocess
import sys
from pathlib import Path

import gradio
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def front_matter(path: Path) -> dict:
    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from spaces.build import build

    return build(tmp_path_factory.mktemp("space") / "space")


def test_front_matter(bundle):
    fm = front_matter(bundle / "README.md")
    assert fm["sdk"] == "gradio"
    assert fm["sdk_version"] == gradio.__version__
    assert fm["app_file"] == "space_app.py" and (bundle / fm["app_file"]).is_file()
    assert str(fm["python_version"]) == "3.11"
    assert fm["title"]
    assert fm["hf_oauth"] is True  # visitors sign in with Hugging Face (gr.LoginButton); admins: KAIZEN_ADMINS


def test_the_entry_runs_in_public_mode(bundle):
    text = (bundle / "space_app.py").read_text()
    setdefault = text.index('os.environ.setdefault("KAIZEN_PUBLIC", "1")')
    assert setdefault < text.index("from agent.settings import Settings")
    assert 'gradio[oauth]' in (bundle / "pyproject.toml").read_text()  # authlib, itsdangerous for the login


def test_bundle_holds_the_project_and_installs_it(bundle):
    for name in ("agent/model.py", "feedback", "adapters", "app.py", "pyproject.toml", "agent/templates/plain.yaml"):
        assert (bundle / name).exists(), name
    assert not list(bundle.rglob("__pycache__"))
    reqs = [line.strip() for line in (bundle / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert reqs == ["."]


@pytest.mark.slow
def test_entry_imports_and_builds_the_blocks(bundle, base_model_dir, tmp_path):
    code = ("import space_app, gradio; assert isinstance(space_app.demo, gradio.Blocks); "
            "print('tabs', [b.label for b in space_app.demo.blocks.values() if type(b).__name__ == 'Tab'])")
    env = dict(os.environ, KAIZEN_DATA_DIR=str(tmp_path), KAIZEN_BASE_MODEL=str(base_model_dir))
    out = subprocess.run([sys.executable, "-c", code], cwd=bundle, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Chat" in out.stdout
