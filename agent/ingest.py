"""Turning an uploaded file into clean text and chunks. Pure functions, no storage.

Bad input raises `IngestError` (a ValueError) with a message a user can act on; nothing here writes anywhere.
"""
from __future__ import annotations

import hashlib
import io
import re
import unicodedata
from pathlib import Path

SUPPORTED = {".txt": "text", ".md": "text", ".markdown": "text", ".pdf": "pdf", ".html": "html", ".htm": "html",
             ".docx": "docx"}
# Chunk size in word pieces of the embedding model (all-MiniLM-L6-v2 reads at most 256, [CLS]/[SEP] included, so
# anything longer is cut short for the dense side). Chosen with `bench/rag_squad.py --chunk-sizes 128,512` (1,216
# SQuAD paragraphs, 1,000 sampled questions; recall@5 of BM25 / dense / hybrid):
#   128 -> 0.930 / 0.908 / 0.964    254 -> 0.937 / 0.911 / 0.963    512 -> 0.938 / 0.899 / 0.962
# Hybrid is flat within noise; 254 (a whole paragraph, mostly) keeps the best dense recall (512 hides the tails of
# long chunks from the embedder), near-best BM25, and 40% fewer chunks to embed and store than 128.
CHUNK_SIZE = 254
CHUNK_OVERLAP = 32


class IngestError(ValueError):
    """A file we refuse to ingest; the message says why."""


# ---------------------------------------------------------------------------------------------- names
_UNSAFE = re.compile(r"[^\w .,()\[\]+=@#-]", re.UNICODE)


def display_name(name: str | None, fallback: str = "document") -> str:
    """A harmless name to show: last path component only, no control or markup characters, at most 120 chars.

    `../../etc/passwd.txt` -> `passwd.txt`; `<script>x.html` -> `_script_x.html`."""
    name = unicodedata.normalize("NFC", str(name or ""))
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")  # control, format, unassigned
    name = _UNSAFE.sub("_", name).strip(" .")
    if len(name) > 120:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 110] + "…" + dot + ext) if dot and len(ext) <= 8 else name[:120]
    return name or fallback


def kind_of(name: str) -> str:
    """'text' | 'pdf' | 'html' | 'docx' from the file's extension; IngestError for anything else (e.g. .svg)."""
    ext = Path(name).suffix.lower()
    if ext not in SUPPORTED:
        allowed = ", ".join(sorted(SUPPORTED))
        raise IngestError(f"unsupported file type {ext or '(none)'!r}: upload one of {allowed}")
    return SUPPORTED[ext]


# ---------------------------------------------------------------------------------------------- extraction
def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")
    text = re.sub(r"[ \t\f\v]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def text_from_plain(data: bytes) -> str:
    """UTF-8 (or UTF-16 with a BOM, or cp1252) text; IngestError for binary content named .txt/.md."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise IngestError("the file claims to be UTF-16 text but is not") from e
    head = data[:65536]
    if b"\x00" in head:
        raise IngestError("this looks like a binary file, not text (it contains NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
    sample = text[:65536]
    bad = sum(1 for ch in sample if ch == "\ufffd" or (unicodedata.category(ch) == "Cc" and ch not in "\n\r\t\f"))
    if sample and bad / len(sample) > 0.02:
        raise IngestError("this looks like a binary file, not text (too many control characters)")
    return text


def text_from_pdf(data: bytes) -> str:
    """Text of every page; IngestError for empty, corrupt, encrypted or image-only PDFs."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    if not data.strip():
        raise IngestError("the PDF is empty (0 bytes)")
    if not data.lstrip()[:5].startswith(b"%PDF"):
        raise IngestError("this is not a PDF (no %PDF header)")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")  # owner-password-only PDFs open with an empty user password
            except Exception:  # noqa: BLE001  (pypdf raises DependencyError/NotImplementedError for some ciphers)
                opened = 0
            if not opened:
                raise IngestError("the PDF is encrypted (password protected); upload an unprotected copy")
        pages = [page.extract_text() or "" for page in reader.pages]
    except IngestError:
        raise
    except (PdfReadError, Exception) as e:  # noqa: BLE001  (pypdf raises many kinds on broken files)
        raise IngestError(f"the PDF could not be read (corrupt or truncated): {type(e).__name__}") from e
    if not pages:
        raise IngestError("the PDF has no pages")
    return "\n\n".join(pages)


def text_from_html(data: bytes) -> str:
    """Visible text only: scripts, styles, embedded SVG/objects and comments are dropped, markup is never kept."""
    from bs4 import BeautifulSoup, Comment

    soup = BeautifulSoup(data, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "iframe", "object", "embed", "svg", "head"]):
        tag.decompose()
    for comment in soup.find_all(string=lambda s: isinstance(s, Comment)):
        comment.extract()
    return soup.get_text("\n")


def text_from_docx(data: bytes) -> str:
    import docx

    try:
        doc = docx.Document(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001  (zipfile/KeyError/lxml errors on broken files)
        raise IngestError(f"the .docx could not be read (corrupt or not a Word file): {type(e).__name__}") from e
    parts = [p.text for p in doc.paragraphs]
    for table in doc.tables:
        for row in table.rows:
            parts.append(" | ".join(cell.text for cell in row.cells))
    return "\n".join(parts)


EXTRACTORS = {"text": text_from_plain, "pdf": text_from_pdf, "html": text_from_html, "docx": text_from_docx}


def extract_text(data: bytes, name: str) -> str:
    """Clean text of a file's bytes, by the extension of `name`; IngestError when there is no usable text."""
    kind = kind_of(name)
    if not data:
        raise IngestError(f"{display_name(name)} is empty (0 bytes)")
    text = _clean(EXTRACTORS[kind](data))
    if not text:
        hint = " (a scanned PDF needs OCR first)" if kind == "pdf" else ""
        raise IngestError(f"{display_name(name)} contains no extractable text{hint}")
    return text


def content_id(text: str) -> str:
    """Document id from the extracted text: the same content uploaded again (under any name) gets the same id."""
    norm = re.sub(r"\s+", " ", text).strip()
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()[:16]


def read_upload(path: str | Path, max_mb: float) -> bytes:
    """The file's bytes; IngestError when it is missing, not a file, or over the size limit (checked before reading)."""
    p = Path(path)
    if not p.is_file():
        raise IngestError(f"{display_name(p.name)}: no such file")
    size = p.stat().st_size
    if size > max_mb * 1024 * 1024:
        raise IngestError(f"{display_name(p.name)} is {size / 1048576:.1f} MB; the limit is {max_mb:g} MB")
    return p.read_bytes()


# ---------------------------------------------------------------------------------------------- chunking
def make_splitter(tokenize, chunk_size: int = CHUNK_SIZE, chunk_overlap: int = CHUNK_OVERLAP):
    """A llama-index SentenceSplitter measuring chunks with `tokenize` (the embedder's own tokenizer), so a chunk
    is never cut short by the embedding model's window."""
    from llama_index.core.node_parser import SentenceSplitter

    overlap = min(chunk_overlap, chunk_size // 4)
    return SentenceSplitter(chunk_size=chunk_size, chunk_overlap=overlap, tokenizer=tokenize)


def chunk_text(text: str, splitter) -> list[str]:
    return [c for c in (s.strip() for s in splitter.split_text(text)) if c]
