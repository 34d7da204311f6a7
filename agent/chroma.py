"""Opening the Chroma collection the document store lives in: a persistent folder on this machine (checked for
damage first) or a Chroma server (`KAIZEN_CHROMA_URL`). Telemetry is off and no embedding function is set: the
store always passes its own embeddings (agent/embeddings.py)."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse


def _settings():
    from chromadb.config import Settings as ChromaSettings

    return ChromaSettings(anonymized_telemetry=False)


def _collection(client, name: str):
    return client.get_or_create_collection(name, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None)


def open_local_collection(folder: Path, name: str, uploads_dir: Path):
    """Collection `name` of the persistent Chroma store in `folder`. A damaged store fails here, at start, naming its
    path and what to do (feedback.integrity.CorruptStoreError): SQLite's quick_check on `chroma.sqlite3` first,
    then the open itself and a count (Chroma reads its segments there)."""
    import chromadb

    from feedback.integrity import CorruptStoreError, quick_check

    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "chroma.sqlite3"
    hint = (f"Stop the app, move the folder {folder} aside (keep it: `sqlite3 {db} .recover` may save its chunks) and "
            f"start again: a new, empty document store is made there. Then upload the documents again (the app kept "
            f"a copy of each original in {uploads_dir}).")
    problems = quick_check(db)
    if problems:
        raise CorruptStoreError(f"the document store {db} is damaged: {'; '.join(problems[:5])}. {hint}")
    try:
        client = chromadb.PersistentClient(path=str(folder), settings=_settings())
        col = _collection(client, name)
        col.count()
    except Exception as e:  # noqa: BLE001  chromadb raises InternalError, sqlite3 and Rust-side errors alike
        raise CorruptStoreError(f"the document store {folder} cannot be opened ({type(e).__name__}: {e}). "
                                f"{hint}") from e
    return col


def open_server_collection(url: str, name: str):
    """Collection `name` on the Chroma server at `url` (http://host:8000; a bare host:port is taken as http)."""
    import chromadb

    parsed = urlparse(url if "://" in url else "http://" + url)
    if not parsed.hostname:
        raise ValueError(f"KAIZEN_CHROMA_URL={url!r} is not a URL like http://host:8000")
    client = chromadb.HttpClient(host=parsed.hostname, port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                                 ssl=parsed.scheme == "https", settings=_settings())
    return _collection(client, name)


def open_collection(url: str | None, folder: Path, name: str, uploads_dir: Path):
    """The server's collection when `url` is set, else the local folder's."""
    return open_server_collection(url, name) if url else open_local_collection(folder, name, uploads_dir)
