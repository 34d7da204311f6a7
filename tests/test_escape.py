"""The chat escaper (agent/escape.py) against hostile Markdown/HTML: rendered by a CommonMark renderer with raw HTML
on and GFM tables (markdown-it-py), no element or attribute outside an allowlist survives; the escaper round-trips."""
from __future__ import annotations

from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from agent.escape import escape_chat, split_code, unescape_chat

ALLOWED = {"p", "br", "hr", "em", "strong", "s", "del", "code", "pre", "blockquote", "ul", "ol", "li",
           "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td"}
MD = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])

HOSTILE = [
    "<img src=http://evil.test/p.png>", "<form action=http://evil.test><input type=password name=p></form>",
    "<div style=\"position:fixed;inset:0;background:red\">", "</div>", "<script>alert(1)</script>",
    "<a href=http://evil.test>x</a>", "![x](http://evil.test/p.png)", "[click](http://evil.test)",
    "<http://evil.test>", "http://evil.test/x", "www.evil.test", "me@evil.test", "[r]: http://evil.test",
    "![r]", "[r]", "<iframe src=//evil.test>", "<svg onload=alert(1)>", "<!-- c -->", "<?php ?>", "<![CDATA[x]]>",
    "`", "``", "```", "~~~", "\\", "\\`", "\\\\`", "|", "| a | b |\n|---|---|\n", "\n", "\n\n", "    ", "> ",
    "- ", "1. ", "# ", "*", "_", "&", "&lt;", "&#60;", "&#91;", "&amp;", "<", ">", "!", "[", "]", "(", ")", ":",
    "//", "@", ".", "=", "\"", "'", " ", "x", "```html\n", "\n```\n", "<b>", "</b>", "<p>", "<br/>",
]
hostile_text = st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(alphabet="`\\<>[]()!:/@.|~\n &#;x", max_size=4)),
                        max_size=30).map("".join)


class Tags(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.bad: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in ALLOWED:
            self.bad.append(tag)
        for name, value in attrs:
            ok = ((tag == "code" and name == "class" and (value or "").startswith("language-"))
                  or (tag in ("th", "td") and name == "style" and (value or "").startswith("text-align:"))
                  or (tag == "ol" and name == "start"))
            if not ok:
                self.bad.append(f"{tag}[{name}={value}]")

    handle_startendtag = handle_starttag

    def handle_comment(self, data):
        self.bad.append("<!--")

    def handle_pi(self, data):
        self.bad.append("<?")

    def unknown_decl(self, data):
        self.bad.append("<!")


def rendered_bad(text: str) -> list[str]:
    p = Tags()
    p.feed(MD.render(escape_chat(text)))
    p.close()
    return p.bad


@pytest.mark.parametrize("text", [
    "\\`<img src=http://evil.test/p.png>`",  # the reported bypass: a backslash before a backtick
    "\\`<form><input type=password></form>`", "\\`<div style=\"position:fixed;inset:0\">`",
    "`abc\n\n<img src=http://evil.test/p.png>\n\n`",  # a "code span" across paragraphs is no code span
    "`a\n# <img src=x>`", "| `a | <img src=x>` |\n|---|---|\n| b | c |",  # a table splits cells before code spans
    " ```a`b\n<img src=x>\n```",  # a backtick fence's info string holds no backtick: not a fence
    "![x](http://evil.test/p.png)", "[x](http://evil.test)", "<http://evil.test>", "http://evil.test", "a@b.test",
])
def test_known_bypasses_render_nothing_live(text):
    assert rendered_bad(text) == []


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_text)
def test_no_element_outside_the_allowlist_survives(text):
    assert rendered_bad(text) == [], (text, escape_chat(text), MD.render(escape_chat(text)))


@settings(max_examples=400, deadline=None)
@given(st.one_of(hostile_text, st.text(max_size=80)))
def test_unescape_is_the_inverse_and_pieces_join_back(text):
    assert "".join(p for _, p in split_code(text)) == text
    assert unescape_chat(escape_chat(text)) == text


def test_code_is_left_as_written():
    text = "Use `<b>` for bold.\n```html\n<i>x</i>\n```\nand <i>this</i> is text"
    shown = escape_chat(text)
    assert "`<b>`" in shown and "```html\n<i>x</i>\n```" in shown and "&lt;i&gt;this&lt;/i&gt;" in shown
    assert "<i>x</i>" in MD.render(shown).replace("&lt;", "<").replace("&gt;", ">")  # shown as code text
