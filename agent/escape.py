"""The one escaping function for chat text shown in the Chatbot (questions, answers, corrections, source names).

The Chatbot renders Markdown, and chat text is untrusted (a model can be steered by a document it quotes). What it
may render: text, emphasis, headings, lists, quotes, tables and code. What it must not: raw HTML (forms, overlays,
scripts), images (a remote image is fetched by the browser the moment it shows: a tracking or exfiltration pixel)
and links (live links to anywhere). So, outside code:

- `&`, `<`, `>` become entities: no raw HTML, no `<http://...>` autolink;
- `[`, `@`, the `:` of `://` and the `.` of `www.` become numeric entities, so nothing starts an image, a link, a
  bare-URL or an e-mail autolink (`&#91;` still reads "[" on screen, but is no Markdown syntax);

and code is left as it is (code renders its text literally, escaping would show the entities). The danger is in
the other direction, treating text as code that the Markdown renderer does not: the old escaper took a backslash-
escaped backtick (`` \\` ``) for the start of a code span and left what followed raw. Here a region counts as code
only where every CommonMark/GFM renderer agrees it is code: a fenced block whose fences start a line (up to three
spaces in), or a code span on one line, opened by a backtick run that no backslash escapes, closed by a run of the
same length, in a stretch of text where no backtick is left unpaired on its line (a renderer pairs runs across
lines) and no line with a `|` (maybe a GFM table row, split into cells before code spans) has a backtick. Anything else is escaped; at worst a
piece of code shows an entity. `unescape_chat` is the exact inverse, for the text of an edit made on the shown text.
"""
from __future__ import annotations

import re

_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")
_RUN = re.compile(r"`+")
_ENTITY = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_DECODE = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&#91;": "[", "&#58;": ":", "&#64;": "@", "&#46;": "."}
_UNESCAPE = re.compile("|".join(re.escape(k) for k in _DECODE))


def _fences(text: str) -> list[tuple[bool, str]]:
    """Split into (is_code, piece): fenced code blocks (fence lines included) and the text between them."""
    out: list[tuple[bool, str]] = []
    lines = text.splitlines(keepends=True)
    buf: list[str] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i].rstrip("\r\n"))
        if m and not (m.group(2)[0] == "`" and "`" in m.group(3)):
            fence = m.group(2)
            j = i + 1
            while j < len(lines):
                c = _FENCE.match(lines[j].rstrip("\r\n"))
                if c and c.group(2)[0] == fence[0] and len(c.group(2)) >= len(fence) and not c.group(3).strip():
                    break
                j += 1
            if buf:
                out.append((False, "".join(buf)))
                buf = []
            out.append((True, "".join(lines[i:j + 1])))  # to the end of the text when never closed
            i = j + 1
            continue
        buf.append(lines[i])
        i += 1
    if buf:
        out.append((False, "".join(buf)))
    return out


def _spans(line: str) -> tuple[list[tuple[bool, str]], bool]:
    """Split one line of text into (is_code, piece) by its code spans; and whether every unescaped backtick run of
    the line found its closer on the line (when one does not, a renderer may pair it with a run of a later line)."""
    out: list[tuple[bool, str]] = []
    pos = start = 0
    closed = True
    while True:
        m = _RUN.search(line, pos)
        if not m:
            break
        a, b = m.span()
        backslashes = len(line[:a]) - len(line[:a].rstrip("\\"))
        if backslashes % 2:  # an escaped backtick is literal; the rest of the run may still open a span
            pos = a + 1
            continue
        n = b - a
        close = next((c for c in _RUN.finditer(line, b) if c.end() - c.start() == n), None)
        if close is None:  # no closer on this line
            closed = False
            pos = b
            continue
        if a > start:
            out.append((False, line[start:a]))
        out.append((True, line[a:close.end()]))
        pos = start = close.end()
    if start < len(line):
        out.append((False, line[start:]))
    return out, closed


def split_code(text: str) -> list[tuple[bool, str]]:
    """(is_code, piece) pieces of `text`, in order; joined they give `text` back. Between two fenced blocks, code
    spans count only when the renderer cannot pair backticks differently: when every line's backtick runs close on
    that line and no line that may be a GFM table row (it holds a `|`) has a backtick; else that stretch is text."""
    out: list[tuple[bool, str]] = []
    for is_code, piece in _fences(text):
        if is_code:
            out.append((True, piece))
            continue
        lines = piece.splitlines(keepends=True)
        split = [_spans(line) for line in lines]
        if all(closed for _, closed in split) and not any("|" in ln and "`" in ln for ln in lines):
            for parts, _ in split:
                out.extend(parts)
        else:
            out.append((False, piece))
    return out


def _escape_text(s: str) -> str:
    s = "".join(_ENTITY.get(ch, ch) for ch in s)
    s = s.replace("[", "&#91;").replace("@", "&#64;")  # no link, image, reference definition, e-mail autolink
    s = s.replace("://", "&#58;//")  # no bare-URL autolink (http://, ftp:// ...)
    return re.sub(r"(?i)(www)\.", r"\1&#46;", s)


def escape_chat(text: str) -> str:
    """Chat text as the Chatbot may render it: no raw HTML, image or link survives; code stays as written."""
    return "".join(piece if is_code else _escape_text(piece) for is_code, piece in split_code(text or ""))


def unescape_chat(text: str) -> str:
    """The inverse of escape_chat: unescape_chat(escape_chat(x)) == x."""
    return "".join(piece if is_code else _UNESCAPE.sub(lambda m: _DECODE[m.group(0)], piece)
                   for is_code, piece in split_code(text or ""))
