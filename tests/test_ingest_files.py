"""Ingestion without a model: text extraction per type, refusals of bad input, display names, chunking."""
from __future__ import annotations

import io
import zipfile

import pytest

from agent import ingest
from agent.ingest import IngestError


# ---------------------------------------------------------------------------------------------- file makers
def make_pdf(lines: list[str], password: str | None = None) -> bytes:
    """A real one-page PDF with text, written by pypdf (RC4-128 encrypted when a password is given)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    w = PdfWriter()
    page = w.add_blank_page(612, 792)
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): w._add_object(font)})})
    ops = " ".join(f"({line}) Tj 0 -16 Td" for line in lines)
    stream = DecodedStreamObject()
    stream.set_data(f"BT /F1 12 Tf 72 720 Td {ops} ET".encode("latin-1"))
    page[NameObject("/Contents")] = w._add_object(stream)
    if password:
        w.encrypt(user_password=password, owner_password="owner-" + password, algorithm="RC4-128")
    out = io.BytesIO()
    w.write(out)
    return out.getvalue()


def make_blank_pdf() -> bytes:
    from pypdf import PdfWriter

    w = PdfWriter()
    w.add_blank_page(200, 200)
    out = io.BytesIO()
    w.write(out)
    return out.getvalue()


def make_docx(paragraphs: list[str]) -> bytes:
    import docx

    d = docx.Document()
    for p in paragraphs:
        d.add_paragraph(p)
    out = io.BytesIO()
    d.save(out)
    return out.getvalue()


BINARY = bytes(range(256)) * 8  # what a renamed executable or image looks like


# ---------------------------------------------------------------------------------------------- extraction
def test_plain_text_and_markdown():
    assert ingest.extract_text("héllo\r\nworld\n\n\n\nbye".encode(), "a.txt") == "héllo\nworld\n\nbye"
    assert ingest.extract_text(b"\xef\xbb\xbf# Title\nbody", "notes.MD") == "# Title\nbody"
    assert ingest.extract_text("caf\u00e9".encode("cp1252"), "old.txt") == "caf\u00e9"
    assert ingest.extract_text("utf16 text".encode("utf-16"), "w.txt") == "utf16 text"


def test_pdf_text_is_extracted():
    text = ingest.extract_text(make_pdf(["The warranty lasts 7 years.", "Second line."]), "manual.pdf")
    assert "warranty lasts 7 years" in text and "Second line" in text


def test_docx_text_is_extracted():
    text = ingest.extract_text(make_docx(["Kiwi birds cannot fly.", "They live in New Zealand."]), "k.docx")
    assert text.splitlines() == ["Kiwi birds cannot fly.", "They live in New Zealand."]


def test_html_keeps_visible_text_only():
    html = (b"<html><head><title>t</title><style>p{color:red}</style></head><body><h1>Hello</h1>"
            b"<script>alert('x')</script><p onclick=\"steal()\">Visible <b>text</b></p><!-- secret comment -->"
            b"<svg><script>evil()</script><text>svgtext</text></svg><iframe src=x>frame</iframe></body></html>")
    text = ingest.extract_text(html, "page.html")
    assert "Hello" in text and "Visible" in text and "text" in text
    for bad in ("alert", "<", "steal", "secret comment", "evil", "svgtext", "color:red"):
        assert bad not in text


@pytest.mark.parametrize("data, name, message", [
    (b"", "empty.pdf", "empty"),
    (b"%PDF-1.4\n1 0 obj << /Type /Catalog", "truncated.pdf", "could not be read"),
    (b"just some text, not a pdf", "fake.pdf", "not a PDF"),
    (BINARY, "program.txt", "binary"),
    (b"\x89PNG\r\n\x1a\n" + BINARY, "image.md", "binary"),
    (b"", "empty.txt", "empty"),
    (b"   \n\t \n", "blank.txt", "no extractable text"),
    (b"<html><script>only()</script></html>", "scripts.html", "no extractable text"),
    (b"PK\x03\x04 not really a zip", "broken.docx", "could not be read"),
    (b"<svg onload=alert(1)></svg>", "image.svg", "unsupported file type"),
    (b"MZ\x90\x00", "setup.exe", "unsupported file type"),
    (b"text", "noextension", "unsupported file type"),
])
def test_bad_files_are_refused_with_a_clear_message(data, name, message):
    with pytest.raises(IngestError, match=message):
        ingest.extract_text(data, name)


def test_encrypted_and_image_only_pdfs_are_refused():
    with pytest.raises(IngestError, match="encrypted"):
        ingest.extract_text(make_pdf(["secret plans"], password="hunter2"), "locked.pdf")
    with pytest.raises(IngestError, match="no extractable text.*OCR"):
        ingest.extract_text(make_blank_pdf(), "scan.pdf")


def test_zip_that_is_not_a_word_file_is_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(IngestError, match="could not be read"):
        ingest.extract_text(buf.getvalue(), "fake.docx")


def test_ingest_error_is_a_value_error():
    assert issubclass(IngestError, ValueError)


# ---------------------------------------------------------------------------------------------- names, ids, sizes
@pytest.mark.parametrize("raw, shown", [
    ("../../etc/passwd.txt", "passwd.txt"),
    ("..\\..\\windows\\win.ini.txt", "win.ini.txt"),
    ("<script>alert(1)</script>.html", "script_.html"),
    ("report\x00\x1b[31m.pdf", "report[31m.pdf"),  # NUL and ESC dropped
    ("notes\u202egpj.txt", "notesgpj.txt"),  # right-to-left override removed
    ("..", "document"),
    ("", "document"),
    ("Ünïcode résumé.md", "Ünïcode résumé.md"),
])
def test_display_name_is_harmless(raw, shown):
    assert ingest.display_name(raw) == shown


def test_display_name_is_bounded():
    name = ingest.display_name("a" * 500 + ".txt")
    assert len(name) <= 120 and name.endswith(".txt")


def test_content_id_ignores_whitespace_and_names():
    assert ingest.content_id("a  b\nc") == ingest.content_id("a b c")
    assert ingest.content_id("a b c") != ingest.content_id("a b d")
    assert len(ingest.content_id("x")) == 16


def test_oversized_file_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * (1024 * 1024 + 1))
    with pytest.raises(IngestError, match="limit is 1 MB"):
        ingest.read_upload(big, max_mb=1)
    assert ingest.read_upload(big, max_mb=2)[:1] == b"a"
    with pytest.raises(IngestError, match="no such file"):
        ingest.read_upload(tmp_path / "missing.txt", max_mb=1)
    with pytest.raises(IngestError, match="no such file"):
        ingest.read_upload(tmp_path, max_mb=1)


def test_sentence_splitter_respects_the_token_budget():
    words = lambda text: text.split()  # noqa: E731  (a whitespace "tokenizer" keeps this test model-free)
    splitter = ingest.make_splitter(words, chunk_size=40, chunk_overlap=5)
    text = " ".join(f"Sentence number {i} says something short." for i in range(60))
    chunks = ingest.chunk_text(text, splitter)
    assert len(chunks) > 5
    assert all(len(c.split()) <= 40 for c in chunks)
    assert "Sentence number 0 " in chunks[0] and "Sentence number 59 " in chunks[-1]
