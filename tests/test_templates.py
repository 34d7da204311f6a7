import pytest

from agent.templates import TemplateError, load_templates, parse


def test_builtin_templates_present_and_valid():
    t = load_templates()
    assert {"plain", "concise", "academic", "grounded"} <= set(t)
    assert t["grounded"].variables == ["question", "sources"]
    assert t["plain"].variables == ["question"]


def test_academic_is_the_classic_engineered_prompt():
    msgs = load_templates()["academic"].render("the French Revolution")
    assert msgs[0]["role"] == "system"
    assert msgs[-1] == {
        "role": "user",
        "content": "Provide a comprehensive, academic-style overview of the French Revolution, "
        "focusing on its causes and effects.",
    }


def test_render_keeps_history_order_and_user_braces_verbatim():
    history = [{"role": "user", "content": "hi {x}"}, {"role": "assistant", "content": "hello"}]
    msgs = load_templates()["plain"].render("what is {this}?", history)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[1]["content"] == "hi {x}"
    assert msgs[-1]["content"] == "what is {this}?"


def test_missing_variable_is_an_error():
    with pytest.raises(TemplateError, match="sources"):
        load_templates()["grounded"].render("q")


def test_user_templates_added_and_broken_ones_skipped(tmp_path):
    (tmp_path / "pirate.yaml").write_text("name: pirate\nsystem: Talk like a pirate.\nuser: '{question}'\n")
    (tmp_path / "broken.yaml").write_text("name: broken\nsystem: x\nuser: 'no question here'\n")
    (tmp_path / "bad-yaml.yaml").write_text("name: [unclosed\n")
    t = load_templates(tmp_path)
    assert "pirate" in t and "broken" not in t
    assert t["pirate"].render("hello")[0]["content"] == "Talk like a pirate."


@pytest.mark.parametrize("text,msg", [
    ("name: UPPER\nsystem: s\nuser: '{question}'", "must match"),
    ("name: ok\nsystem: s\nuser: 'no var'", "question"),
    ("- a list", "mapping"),
    ("name: ok\nuser: '{question}'", "system"),
])
def test_parse_rejects_bad_files(text, msg):
    with pytest.raises(TemplateError, match=msg):
        parse(text, "t.yaml")


def test_serving_system_is_the_rendered_system_prompt(tmp_path):
    from agent.templates import serving_system

    assert serving_system("plain") == "You are a helpful AI assistant named Kaizen."
    assert serving_system("grounded").startswith("You are Kaizen, a careful assistant.")
    assert serving_system("no-such-template") is None
    (tmp_path / "mine.yaml").write_text("name: mine\nsystem: 'Braces {{kept}} here.'\nuser: '{question}'\n")
    assert serving_system("mine", tmp_path) == "Braces {kept} here."
