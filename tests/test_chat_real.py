"""The real default model (SmolLM2-135M-Instruct from the bundled GGUF), through the answer pipeline and the CLI."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.chat import Answerer
from tests.conftest import PARIS_QUESTION

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_capital_of_france_streams_paris(chat_model, settings):
    answerer = Answerer(chat_model, settings)
    reply = answerer.answer([], PARIS_QUESTION, template="plain", rag="off")
    pieces = list(reply.generation)
    assert len(pieces) > 1, "the answer must stream in more than one chunk"
    assert "Paris" in reply.generation.text
    assert reply.template == "plain" and reply.generation.adapter is None
    assert reply.generation.model == chat_model.name


def test_template_changes_the_prompt_and_the_answer(chat_model, settings):
    answerer = Answerer(chat_model, settings)
    plain = answerer.answer([], "volcanoes", template="plain", rag="off")
    academic = answerer.answer([], "volcanoes", template="academic", rag="off")
    assert "academic-style overview of volcanoes" in academic.messages[-1]["content"]
    assert plain.messages[-1]["content"] == "volcanoes"
    assert plain.generation.collect() != academic.generation.collect()


def test_oversized_and_empty_messages_are_refused(chat_model, settings):
    answerer = Answerer(chat_model, settings)
    with pytest.raises(ValueError, match="too long"):
        answerer.answer([], "x" * (settings.max_input_chars + 1))
    with pytest.raises(ValueError, match="empty"):
        answerer.answer([], "   ")
    with pytest.raises(ValueError, match="unknown template"):
        answerer.answer([], "hi", template="nope")


def test_cli_chat_reads_piped_stdin(base_model_dir, tmp_path):
    env = dict(os.environ, KAIZEN_DATA_DIR=str(tmp_path), KAIZEN_BASE_MODEL=str(base_model_dir),
               KAIZEN_MAX_NEW_TOKENS="32")
    out = subprocess.run([sys.executable, "-m", "cli.main", "chat", "--rag", "off"],
                         input=PARIS_QUESTION + "\n", capture_output=True, text=True, env=env,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
