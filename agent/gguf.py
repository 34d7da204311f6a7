"""The GGUF file the llama.cpp engine serves for a base model (KAIZEN_BASE_MODEL, KAIZEN_LLAMA_QUANT).

    a .gguf path           that file, as it is
    default name / a folder converted from a GGUF (the bundled model; tests and the lab pass its folder)
                           KAIZEN_LLAMA_QUANT=q8_0 (default): the training copy re-quantized once to Q8_0, in the
                           folder (on an AVX2 CPU its prefill is ~2x the Q4_1's: bench/chat_speed.py);
                           `bundled`: the bundled Q4_1 file as it is
    any other HF folder/id converted once with llama.cpp's `convert_hf_to_gguf.py` into
                           <models>/<name>.<quant>.gguf (f16 when the quant is `bundled`)
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from agent.settings import DEFAULT_BASE

log = logging.getLogger(__name__)


QUANTS = ("q8_0", "bundled", "f16", "bf16")


def base_gguf(base: str, models_dir: Path, quant: str = "q8_0") -> Path:
    from agent.model import SOURCE_FILE, bundled_gguf, resolve_base

    if quant not in QUANTS:
        raise ValueError(f"KAIZEN_LLAMA_QUANT={quant!r}: use one of {', '.join(QUANTS)}")
    if base.lower().endswith(".gguf"):
        path = Path(base).expanduser()
        if not path.is_file():
            raise RuntimeError(f"KAIZEN_BASE_MODEL={base}: no such .gguf file")
        return path
    if base == DEFAULT_BASE and quant == "bundled":
        return bundled_gguf()
    folder = Path(resolve_base(base, models_dir)) if base == DEFAULT_BASE else Path(base).expanduser()
    marker = folder / SOURCE_FILE
    if marker.is_file():
        source = Path(json.loads(marker.read_text(encoding="utf-8"))["gguf"])
        if quant == "bundled" and source.is_file():
            return source
        return convert_hf(str(folder), folder, quant, name="serve")  # cached in the converted folder itself
    return convert_hf(base, Path(models_dir), "f16" if quant == "bundled" else quant)


def convert_hf(base: str, models_dir: Path, quant: str = "f16", name: str | None = None) -> Path:
    """An HF model (folder or id in the local cache) as a GGUF of type `quant`, converted once (atomic)."""
    from agent import llama_build

    name = name or re.sub(r"[^A-Za-z0-9._-]+", "_", base.strip("/"))[-80:]
    models_dir = Path(models_dir)
    target = models_dir / f"{name}.{quant}.gguf"
    if target.exists():
        return target
    folder = Path(base).expanduser()
    if not folder.is_dir():
        from huggingface_hub import snapshot_download  # the local cache only: HF_HUB_OFFLINE is set

        folder = Path(snapshot_download(base))
    llama_build.require()
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    log.info("converting %s to %s (once)", base, target)
    done = subprocess.run([sys.executable, str(llama_build.converter("convert_hf_to_gguf.py")), str(folder),
                           "--outtype", quant, "--outfile", str(tmp)], capture_output=True, text=True)
    if done.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"could not convert {base} to GGUF for llama.cpp: {done.stderr.strip()[-800:]}")
    tmp.rename(target)
    return target
