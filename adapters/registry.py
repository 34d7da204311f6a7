"""The adapter registry: versioned folders under settings.adapters_dir, safetensors only, atomic promotion.

    adapters/
      v0001-sft/   adapter_model.safetensors  adapter_config.json  meta.json  metrics.jsonl  train.json ...
      v0002-full/  model.safetensors  config.json  tokenizer.json ...  meta.json
      ACTIVE       the active version's name (absent = the base model)
      PIN          a pinned version or "base" (absent = follow ACTIVE)
      history.json the previously active versions, newest last (what `rollback` returns to)

`meta.json`: version, method, kind ("lora" | "full"), base_model, base_hash, recipe, dataset (manifest), metrics,
eval (report), gate, created, state ("candidate" | "active" | "retired"), files (sha256 of each weight file).
Every write is a temp file + `os.replace`, under a `filelock` lock (.registry.lock), so a reader never sees half a file and a killed
process never leaves a half-promoted registry. A folder holding pickle-capable files (.bin .pt .pth .pkl .ckpt ...),
a corrupted safetensors file or weights for another base model are refused with `RegistryError`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from filelock import FileLock

from agent.files import atomic_write, sha256_file, write_json  # noqa: F401  (re-exported)
from agent.lora_gguf import GGUFError
from agent.settings import Settings

FORBIDDEN = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".h5", ".msgpack")
STATES = ("candidate", "active", "retired")
VERSION_RE = re.compile(r"^v(\d{4,})-([a-z]+)$")
WEIGHTS = {"lora": ("adapter_model.safetensors", "adapter_config.json"), "full": ("model.safetensors", "config.json")}
BASE = "base"


class RegistryError(ValueError):
    """Refused: the adapter folder or the request is not valid. Nothing was changed."""


# ---------------------------------------------------------------------------------------------- small helpers


def weight_kind(folder: Path) -> str:
    """"lora" or "full" from the files present."""
    if (folder / "adapter_config.json").exists() or (folder / "adapter_model.safetensors").exists():
        return "lora"
    if (folder / "config.json").exists():
        return "full"
    raise RegistryError(f"{folder}: neither adapter_config.json (LoRA) nor config.json (full model) found")


def check_safetensors(path: Path) -> int:
    """Parse and read every tensor of a safetensors file; refuse truncation, a bad header or NaN/inf values.
    Returns the number of tensors."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            for k in keys:
                t = f.get_tensor(k)
                if t.is_floating_point() and not torch.isfinite(t).all():
                    raise RegistryError(f"{path.name}: tensor {k} holds NaN or infinite values")
    except RegistryError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated / garbled files
        raise RegistryError(f"{path.name} is not a valid safetensors file ({type(e).__name__}: {e})") from e
    if not keys:
        raise RegistryError(f"{path.name} holds no tensors")
    return len(keys)


def base_fingerprint(settings: Settings) -> dict:
    """{"base_model", "base_hash"}: sha256 over the base's config.json and model weights. The weight hash is
    cached in <models_dir>/.hashes.json by (path, size, mtime), so it is computed once per file."""
    from agent.model import resolve_base

    path = Path(resolve_base(settings.base_model, settings.models_dir))
    if not path.is_dir():  # a hub id resolved by transformers' cache: identify it by name
        return {"base_model": settings.base_model, "base_hash": "id:" + settings.base_model}
    h = hashlib.sha256()
    if (path / "config.json").exists():
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        cfg = {k: v for k, v in cfg.items() if k not in ("transformers_version", "_name_or_path", "dtype",
                                                         "torch_dtype", "use_cache")}
        h.update(json.dumps(cfg, sort_keys=True).encode())
    for w in sorted(path.glob("*.safetensors")):
        h.update(w.name.encode() + _cached_hash(w, Path(settings.models_dir)).encode())
    return {"base_model": settings.base_model, "base_hash": h.hexdigest()}


def _cached_hash(path: Path, cache_dir: Path) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = cache_dir / ".hashes.json"
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = sha256_file(path)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            write_json(cache_file, cache)
        except OSError:
            pass  # a read-only models dir: hash again next time
    return cache[key]


# ---------------------------------------------------------------------------------------------- the registry
class Registry:
    """Versions under settings.adapters_dir. See the module docstring for the layout."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = Path(settings.adapters_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self._fingerprint: dict | None = None
        self._lock = FileLock(self.root / ".registry.lock")  # across processes and threads; blocks until free

    # -- paths & locking ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        with self._lock:
            yield

    def folder(self, version: str) -> Path:
        if not VERSION_RE.match(str(version or "")):
            raise RegistryError(f"{version!r} is not a version name (like v0003-sft)")
        path = self.root / version
        if not (path / "meta.json").exists():
            raise RegistryError(f"unknown version {version!r}; known: {', '.join(self.versions()) or 'none'}")
        return path

    def tmp_folder(self, label: str = "run") -> Path:
        """A fresh folder inside the registry (same file system: registering it is a rename). Folders starting
        with '.' are never listed; a crashed run's leftovers are removed by `clean_tmp`."""
        path = self.root / f".tmp-{label}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        return path

    def clean_tmp(self, label: str = "", older_than_s: float = 0) -> int:
        """Remove leftover temporary folders (of `label` only, when given)."""
        n = 0
        for p in self.root.glob(f".tmp-{label}*"):
            if p.is_dir() and time.time() - p.stat().st_mtime >= older_than_s:
                shutil.rmtree(p, ignore_errors=True)
                n += 1
        return n

    # -- reading ----------------------------------------------------------------------------------------
    def versions(self) -> list[str]:
        names = [p.name for p in self.root.iterdir() if p.is_dir() and VERSION_RE.match(p.name)
                 and (p / "meta.json").exists()]
        return sorted(names, key=lambda n: int(VERSION_RE.match(n).group(1)))

    def get(self, version: str) -> dict:
        """The version's meta.json plus "folder"."""
        path = self.folder(version)
        try:
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        except ValueError as e:
            raise RegistryError(f"{version}: meta.json is not valid JSON ({e})") from e
        return {**meta, "folder": str(path)}

    def list(self) -> list[dict]:
        """Every version's meta (oldest first), with "folder", "serving" and "pinned" flags."""
        serving, pin = self.serving(), self.pinned()
        out = []
        for v in self.versions():
            try:
                meta = self.get(v)
            except RegistryError as e:
                meta = {"version": v, "state": "broken", "error": str(e), "folder": str(self.root / v)}
            out.append({**meta, "serving": v == serving, "pinned": v == pin})
        return out

    def _pointer(self, name: str) -> str | None:
        try:
            value = (self.root / name).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return value or None

    def active(self) -> str | None:
        """The active version (None = the base model)."""
        v = self._pointer("ACTIVE")
        return None if v in (None, BASE) else v

    def pinned(self) -> str | None:
        """The pinned version, "base" when the base is pinned, None when nothing is pinned."""
        return self._pointer("PIN")

    def serving(self) -> str | None:
        """What the app should serve: the pinned version (None for a pinned base), else the active one."""
        pin = self.pinned()
        if pin is not None:
            return None if pin == BASE else pin
        return self.active()

    def history(self) -> list[str]:
        try:
            return list(json.loads((self.root / "history.json").read_text(encoding="utf-8")))
        except (FileNotFoundError, ValueError):
            return []

    # -- validation -------------------------------------------------------------------------------------
    def fingerprint(self) -> dict:
        if self._fingerprint is None:
            self._fingerprint = base_fingerprint(self.settings)
        return self._fingerprint

    def validate(self, folder: str | Path, meta: dict | None = None) -> dict:
        """Check a version folder before it is registered or served. Returns a summary (kind, tensors, files
        with sha256). Raises RegistryError: missing folder, pickle-capable file, missing or corrupted weights,
        a file whose sha256 differs from meta.json, or weights built for another base model."""
        folder = Path(folder)
        if not folder.is_dir():
            raise RegistryError(f"{folder} is not a folder")
        bad = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                     if p.is_file() and p.suffix.lower() in FORBIDDEN)
        if bad:
            raise RegistryError(f"{folder.name}: refused, holds pickle-capable file(s) {bad}; "
                                "only safetensors weights are accepted")
        kind = weight_kind(folder)
        weights_name, config_name = WEIGHTS[kind]
        weights = sorted(folder.glob("*.safetensors"))
        if not (folder / config_name).exists():
            raise RegistryError(f"{folder.name}: {config_name} is missing")
        if kind == "lora" and not (folder / weights_name).exists():
            raise RegistryError(f"{folder.name}: {weights_name} is missing")
        if not weights:
            raise RegistryError(f"{folder.name}: no .safetensors weights")
        try:
            config = json.loads((folder / config_name).read_text(encoding="utf-8"))
        except ValueError as e:
            raise RegistryError(f"{folder.name}: {config_name} is not valid JSON ({e})") from e
        if kind == "lora" and str(config.get("peft_type", "")).upper() != "LORA":
            raise RegistryError(f"{folder.name}: adapter_config.json is not a LoRA config")
        meta = meta if meta is not None else self._read_meta(folder)
        recorded = (meta or {}).get("files") or {}
        files, tensors = {}, 0
        for w in weights:
            digest = sha256_file(w)
            if w.name in recorded and recorded[w.name] != digest:
                raise RegistryError(f"{folder.name}: {w.name} changed since it was registered (sha256 mismatch)")
            tensors += check_safetensors(w)
            files[w.name] = digest
        missing = sorted(set(recorded) - set(files))
        if missing:
            raise RegistryError(f"{folder.name}: registered file(s) {missing} are missing")
        if meta and meta.get("base_hash"):
            mine = self.fingerprint()
            if meta["base_hash"] != mine["base_hash"]:
                raise RegistryError(
                    f"{folder.name}: built for base model {meta.get('base_model')!r} "
                    f"(hash {str(meta['base_hash'])[:12]}), but the serving base is {mine['base_model']!r} "
                    f"(hash {mine['base_hash'][:12]}); refused")
        return {"kind": kind, "tensors": tensors, "files": files}

    @staticmethod
    def _read_meta(folder: Path) -> dict | None:
        try:
            return json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise RegistryError(f"{folder.name}: meta.json is not valid JSON ({e})") from e

    # -- writing ----------------------------------------------------------------------------------------
    def register(self, folder: str | Path, meta: dict | None = None) -> str:
        """Validate `folder` and add it as a new version (state "candidate" unless meta says otherwise).
        A folder inside the registry (e.g. under `tmp_folder()`) is moved (a rename); any other is copied. Returns the version name.
        `meta` may hold method, recipe, dataset, metrics, eval, gate; the base model and its hash are this
        registry's unless given (a mismatch is refused)."""
        folder = Path(folder)
        meta = dict(meta or {})
        fp = self.fingerprint()
        meta.setdefault("base_model", fp["base_model"])
        meta.setdefault("base_hash", fp["base_hash"])
        meta.pop("files", None)  # computed here, never trusted from the caller
        info = self.validate(folder, {**meta, "files": {}})
        method = str(meta.get("method") or ("full" if info["kind"] == "full" else "sft"))
        if not re.fullmatch(r"[a-z]+", method):
            raise RegistryError(f"method {method!r}: lower-case letters only")
        state = meta.get("state", "candidate")
        if state not in ("candidate", "retired"):
            raise RegistryError(f"a new version starts as candidate or retired, not {state!r}")
        gguf = self._gguf_lora(folder) if info["kind"] == "lora" else None
        if gguf:
            meta["gguf"] = gguf
        with self._locked():
            numbers = [int(VERSION_RE.match(v).group(1)) for v in self.versions()]
            version = f"v{max(numbers, default=0) + 1:04d}-{method}"
            meta.update(version=version, method=method, kind=info["kind"], files=info["files"], state=state,
                        created=meta.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            target = self.root / version
            inside = self.root.resolve() in folder.resolve().parents  # same file system: a rename
            staging = folder if inside else self.tmp_folder("copy")
            if not inside:
                shutil.rmtree(staging)
                shutil.copytree(folder, staging)
            write_json(staging / "meta.json", meta)
            os.rename(staging, target)  # the version appears complete, or not at all
        return version

    def _gguf_lora(self, folder: Path) -> dict | None:
        """When the app serves with llama.cpp: the version's GGUF LoRA, converted now ({"file", "sha256"}); an
        adapter llama.cpp cannot serve is refused. Otherwise None (converted when first served by llama.cpp) or
        the refusal noted."""
        from agent import lora_gguf as gguf
        from agent.engine import engine_kind
        from agent.model import resolve_base

        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        reason = gguf.refusal(config)
        serving = engine_kind(self.settings)
        if reason:
            if serving == "llamacpp":
                raise RegistryError(f"{folder.name}: refused, the llama.cpp engine cannot serve it: {reason}")
            return {"file": None, "refused": reason}
        if serving != "llamacpp":
            return None
        try:
            out = gguf.convert(folder, resolve_base(self.settings.base_model, self.settings.models_dir))
        except gguf.GGUFError as e:
            raise RegistryError(str(e)) from e
        return {"file": out.name, "sha256": sha256_file(out)}

    def update_meta(self, version: str, **fields) -> dict:
        """Set fields of a version's meta.json (eval, gate, notes ...), atomically."""
        with self._locked():
            return self._update(version, **fields)

    def _update(self, version: str, **fields) -> dict:
        meta = self.get(version)
        meta.pop("folder", None)
        meta.update(fields)
        write_json(self.root / version / "meta.json", meta)
        return meta

    def promote(self, version: str) -> str:
        """Make `version` active (validated first). The previous active version is retired and remembered for
        `rollback`. The ACTIVE pointer is swapped atomically."""
        with self._locked():
            self.validate(self.folder(version))
            previous = self.active()
            if previous == version:
                return version
            if previous is not None:
                self._update(previous, state="retired")
                write_json(self.root / "history.json", (self.history() + [previous])[-50:])
            self._update(version, state="active", promoted=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            atomic_write(self.root / "ACTIVE", version + "\n")
        return version

    def rollback(self) -> str | None:
        """Retire the active version and re-activate the previous one (None: back to the base model). Versions
        that no longer validate are skipped. Returns the new active version."""
        with self._locked():
            current = self.active()
            history = self.history()
            target = None
            while history:
                candidate = history.pop()
                try:
                    self.validate(self.folder(candidate))
                    target = candidate
                    break
                except RegistryError:
                    continue
            if current is not None:
                self._update(current, state="retired")
            if target is not None:
                self._update(target, state="active")
            write_json(self.root / "history.json", history)
            atomic_write(self.root / "ACTIVE", (target or BASE) + "\n")
        return target

    def pin(self, version: str | None) -> str | None:
        """Serve `version` (or "base") whatever gets promoted; None removes the pin. Returns what is served."""
        with self._locked():
            if version is None:
                (self.root / "PIN").unlink(missing_ok=True)
            else:
                if version != BASE:
                    self.validate(self.folder(version))
                atomic_write(self.root / "PIN", version + "\n")
        return self.serving()

    def retire(self, version: str) -> None:
        with self._locked():
            if self.active() == version:
                raise RegistryError(f"{version} is active: roll back or promote another version first")
            self._update(version, state="retired")


# ---------------------------------------------------------------------------------------------- serving glue
def sync_model(registry: Registry, model) -> str | None:
    """Make a `agent.model.ChatModel` serve `registry.serving()`: validate, attach (once) and `use` it; None =
    the base. A version that fails validation, or a full-model version (it needs a reload, not a swap), raises
    RegistryError and the model keeps serving what it served before."""
    version = registry.serving()
    if version is None:
        model.use(None)
        return None
    attach(registry, model, version)
    model.use(version)
    return version


def attach(registry: Registry, model, version: str) -> None:
    """Attach `version` to a `ChatModel` once, validated first (a no-op when it is attached already). A full-model
    version needs a reload, not a swap: RegistryError, and the model is left as it was; so is a LoRA whose GGUF the
    llama.cpp engine refuses (agent/lora_gguf.py GGUFError)."""
    meta = registry.get(version)
    if meta.get("kind") == "full":
        raise RegistryError(f"{version} is a full model: restart with KAIZEN_BASE_MODEL={meta['folder']}")
    if version not in model.adapters:
        registry.validate(meta["folder"])
        try:
            model.add_adapter(version, meta["folder"])
        except GGUFError as e:  # the fast engine's GGUF of it: changed on disk, or not convertible
            raise RegistryError(str(e)) from e
