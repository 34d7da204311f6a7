"""Every LoRA version also as a GGUF LoRA, so the llama.cpp engine can serve it (`lora.gguf` in its folder).

Converted with the `convert_lora_to_gguf.py` of the same llama.cpp tree the engine was built from (the PyPI `gguf`
package lags behind it). Adapter types llama.cpp cannot reproduce are refused with the reason (`refusal`, pure).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agent.files import sha256_file, write_json

GGUF_NAME = "lora.gguf"


class GGUFError(ValueError):
    """A LoRA that llama.cpp cannot serve (its type, a failed conversion, or a file changed after registration).
    The registry reports it as a RegistryError."""


def refusal(adapter_config: dict) -> str | None:
    """Why this peft LoRA cannot be served by llama.cpp exactly, or None. Pure."""
    if str(adapter_config.get("peft_type", "LORA")).upper() != "LORA":
        return f"a {adapter_config.get('peft_type')} adapter is not a LoRA"
    if adapter_config.get("use_rslora"):
        return "rsLoRA scales by alpha/sqrt(r), llama.cpp by alpha/r: the served adapter would be mis-scaled"
    if adapter_config.get("use_dora"):
        return "DoRA's magnitude vectors have no GGUF LoRA form"
    if adapter_config.get("modules_to_save"):
        return f"modules_to_save {adapter_config['modules_to_save']} are full layer copies, not LoRA deltas"
    targets = adapter_config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    if any(t in ("lm_head", "embed_tokens") or str(t).endswith((".lm_head", ".embed_tokens")) for t in targets):
        return "a LoRA on lm_head / embed_tokens (tied in this model) does not convert"
    if adapter_config.get("rank_pattern") or adapter_config.get("alpha_pattern"):
        return "per-layer rank or alpha patterns are not converted"
    return None


def base_folder(folder: Path, base: str | Path | None = None) -> Path:
    """The HF folder of the base the adapter was trained on (its config and tokenizer)."""
    if base is None:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        base = config.get("base_model_name_or_path") or ""
    path = Path(str(base)).expanduser()
    if not (path / "config.json").exists():
        raise GGUFError(f"{folder.name}: the base model folder {str(base)!r} is not here, so the LoRA cannot be "
                        "converted for llama.cpp")
    return path


def convert(folder: Path, base: str | Path | None = None) -> Path:
    """Write `folder/lora.gguf` (f16) from the peft adapter in `folder`; atomic. Returns its path."""
    from agent import llama_build

    folder = Path(folder)
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    reason = refusal(config)
    if reason:
        raise GGUFError(f"{folder.name}: not servable by llama.cpp: {reason}")
    llama_build.require()
    out = folder / GGUF_NAME
    tmp = folder / f"{GGUF_NAME}.tmp-{os.getpid()}"
    done = subprocess.run([sys.executable, str(llama_build.converter()), "--base", str(base_folder(folder, base)),
                           "--outtype", "f16", "--outfile", str(tmp), str(folder)],
                          capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"})  # its own gguf-py
    if done.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise GGUFError(f"{folder.name}: GGUF conversion failed: {(done.stderr or done.stdout).strip()[-800:]}")
    os.replace(tmp, out)
    return out


def ensure_lora_gguf(folder: Path, base: str | Path | None = None) -> Path:
    """`folder/lora.gguf`, checked against the sha256 in meta.json. Missing: converted now (and recorded when the
    folder has a meta.json). Present with another sha256 than recorded: refused (GGUFError), since a file that
    changed after registration is not the adapter that passed the gate."""
    folder = Path(folder)
    out = folder / GGUF_NAME
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    recorded = (meta.get("gguf") or {}).get("sha256")
    if out.exists():
        if recorded and sha256_file(out) != recorded:
            raise GGUFError(f"{folder.name}: {GGUF_NAME} changed since it was registered (sha256 mismatch); refused")
        return out
    convert(folder, base)
    if meta_path.exists():
        meta["gguf"] = {"file": GGUF_NAME, "sha256": sha256_file(out)}
        write_json(meta_path, meta)
    return out
