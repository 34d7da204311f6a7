"""Prompt templates: named YAML files (system prompt + user template) rendered with langchain-core.

Built-ins live in agent/templates/; users add or override templates by dropping `NAME.yaml` files into
`<data_dir>/templates/`. A file has `name`, `description`, `system`, `user`; `user` must use `{question}`, and may
use other variables (`{sources}` for the grounded template). A missing variable at render time is an error.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

log = logging.getLogger(__name__)
BUILTIN_DIR = Path(__file__).parent / "templates"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_ROLE = {"system": "system", "human": "user", "ai": "assistant"}


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    system: str
    user: str
    path: str = ""

    @property
    def prompt(self) -> ChatPromptTemplate:
        return ChatPromptTemplate.from_messages(
            [("system", self.system), MessagesPlaceholder("history", optional=True), ("human", self.user)]
        )

    @property
    def variables(self) -> list[str]:
        return sorted(v for v in self.prompt.input_variables if v != "history")

    def render(self, question: str, history: list[dict] | None = None, **variables) -> list[dict]:
        """Chat messages (role/content dicts) for the model's chat template. Raises TemplateError when a variable
        the template uses is missing."""
        missing = [v for v in self.variables if v != "question" and v not in variables]
        if missing:
            raise TemplateError(f"template {self.name!r} needs {', '.join(missing)}")
        past = [
            HumanMessage(m["content"]) if m["role"] == "user" else AIMessage(m["content"])
            for m in (history or [])
            if m["role"] in ("user", "assistant")
        ]
        out = self.prompt.format_messages(question=question, history=past, **variables)
        return [{"role": _ROLE[m.type], "content": m.content} for m in out]


def parse(text: str, path: str = "") -> Template:
    """Parse and validate one template file's text."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TemplateError(f"{path or 'template'}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise TemplateError(f"{path or 'template'}: expected a mapping with name, system, user")
    for key in ("name", "system", "user"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise TemplateError(f"{path or 'template'}: missing or empty {key!r}")
    if not NAME_RE.match(data["name"]):
        raise TemplateError(f"{path}: template name {data['name']!r} must match {NAME_RE.pattern}")
    t = Template(data["name"], str(data.get("description", "")), data["system"], data["user"], str(path))
    try:
        variables = t.variables
    except (ValueError, KeyError) as e:  # unbalanced braces and the like
        raise TemplateError(f"{path}: bad placeholder: {e}") from e
    if "question" not in variables:
        raise TemplateError(f"{path}: the user template must contain {{question}}")
    return t


def load_templates(user_dir: str | Path | None = None) -> dict[str, Template]:
    """Built-in templates, then the user's (a user file with a built-in's name overrides it). A broken user file
    is skipped with a logged warning, so one bad file never takes the app down."""
    found: dict[str, Template] = {}
    for f in sorted(BUILTIN_DIR.glob("*.yaml")):
        t = parse(f.read_text(encoding="utf-8"), str(f))
        found[t.name] = t
    if user_dir and Path(user_dir).is_dir():
        for f in sorted(Path(user_dir).glob("*.yaml")):
            try:
                t = parse(f.read_text(encoding="utf-8"), str(f))
            except (TemplateError, UnicodeDecodeError) as e:
                log.warning("skipping template %s: %s", f, e)
                continue
            found[t.name] = t
    return found


def serving_system(name: str, user_dir: str | Path | None = None) -> str | None:
    """The rendered system prompt of template `name` (the app's default template, for training rows that should
    look like what the app sends); None when there is no such template."""
    return system_of(load_templates(user_dir).get(name))


def training_prompts(name: str, user_dir: str | Path | None = None) -> tuple[str | None, dict[str, Template]]:
    """(the system prompt of the app's template `name`, every template), loaded once: what `build_datasets` renders
    training rows with (`system=`, `templates=`)."""
    templates = load_templates(user_dir)
    return system_of(templates.get(name)), templates


def system_of(t: Template | None) -> str | None:
    """The rendered system prompt of template `t`; None without a template or a system message."""
    if t is None:
        return None
    try:
        first = t.render("", **{v: "" for v in t.variables if v != "question"})[0]
    except (TemplateError, KeyError):
        return None
    return first["content"] if first["role"] == "system" else None
