"""The folders' import directions (README "Map"): each stage of the loop imports only what sits below it.

Read from the source (every import statement, function-local ones too), so a lazy import cannot hide a wrong
direction. Pure: no module is imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("agent", "feedback", "adapters", "lab", "web", "ui", "cli")
ENGINE = ("torch", "transformers", "peft", "trl", "llama_cpp", "agent.engine", "agent.engine_http", "agent.model",
          "agent.decoding", "agent.llama_server", "agent.gguf", "agent.lora_gguf")
# folder -> what it must never import (a name or a dotted prefix of one)
FORBIDDEN = {
    "feedback": ("gradio", "agent", "adapters", "lab", "web", "ui", "cli", "app", *ENGINE),
    "agent": ("gradio", "adapters", "lab", "web", "ui", "cli", "app"),
    "adapters": ("gradio", "lab", "web", "ui", "cli", "app"),
    "lab": ("gradio", "web", "ui", "cli", "app"),
    "web": ("gradio", "lab", "ui", "cli", "app"),
    "ui": ("cli", "app"),
    "cli": (),
}
# the bottom helpers `feedback` may use from agent/: settings, templates, files, offline; nothing that answers
ALLOWED = {"feedback": ("agent.settings", "agent.templates", "agent.files", "agent.offline")}
# what `agent` may use from feedback/: the store's pure checks, not the store
ALLOWED["agent"] = ("feedback.integrity",)
GRADIO_HOMES = ("ui",)  # the only folder whose code imports gradio (app.py builds services, ui/ the page)


def imports(source: str) -> list[str]:
    """Every absolute module name `source` imports (`from a.b import c` gives a.b and a.b.c)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names]
    return out


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(folder: str, source: str) -> list[str]:
    """The imports of a module in `folder` that break the map."""
    bad = []
    for name in imports(source):
        if name.split(".")[0] == folder:
            continue
        if any(_under(name, a) or _under(a, name) for a in ALLOWED.get(folder, ())):
            continue
        if any(_under(name, f) for f in FORBIDDEN[folder]):
            bad.append(name)
    return bad


def modules():
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).glob("*.py")):
            yield folder, path


def test_every_folder_imports_only_what_lies_below_it():
    found = {f"{p.relative_to(ROOT)}": v for folder, p in modules() if (v := violations(folder, p.read_text()))}
    assert not found, f"imports against the map (README 'Map'): {found}"


def test_only_ui_imports_gradio():
    found = [str(p.relative_to(ROOT)) for folder, p in [*modules(), ("app", ROOT / "app.py")]
             if folder not in GRADIO_HOMES and any(_under(n, "gradio") for n in imports(p.read_text()))]
    assert not found, f"gradio imported outside ui/: {found}"


def test_the_checker_sees_a_wrong_direction():
    # the rules catch what they are for: feedback loading the engine or gradio, the engine importing the UI
    assert violations("feedback", "def f():\n    from agent.model import load\n") == ["agent.model", "agent.model.load"]
    assert violations("feedback", "import gradio as gr\n") == ["gradio"]
    assert violations("agent", "from ui.chat import ChatLogic\n") == ["ui.chat", "ui.chat.ChatLogic"]
    assert violations("feedback", "from agent.settings import Settings\n") == []
    assert violations("agent", "from agent import llama_build\n") == []


def test_no_project_folder_is_installed_under_its_own_name():
    # `adapters` is AdapterHub's import name too: the folders run from the checkout; only the launcher is installed
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setup["packages"] == [] and setup["py-modules"] == ["kaizen_chat"]
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["kaizen"] == "kaizen_chat:main"
