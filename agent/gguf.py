"""The GGUF file the llama.cpp engine serves for a base model (KAIZEN_BASE_MODEL).

    default name           the bundled Q4_1 GGUF as it is (the exact weights the fp32 training copy comes from)
    a .gguf path           that file
    a folder from a GGUF   the GGUF its `source.json` names (the converted bundled model, in tests and the lab)
    any other HF folder/id converted once with llama.cpp's `convert_hf_to_gguf.py` into <models>/<name>.f16.gguf
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


def base_gguf(base: str, models_dir: Path) -> Path:
    from agent.model import SOURCE_FILE, bundled_gguf

    if base == DEFAULT_BASE:
        return bundled_gguf()
    if base.lower().endswith(".gguf"):
        path = Path(base).expanduser()
        if not path.is_file():
            raise RuntimeError(f"KAIZEN_BASE_MODEL={base}: no such .gguf file")
        return path
    folder = Path(base).expanduser()
    marker = folder / SOURCE_FILE
    if marker.is_file():
        source = Path(json.loads(marker.read_text(encoding="utf-8"))["gguf"])
        if source.is_file():
            return source
    return convert_hf(base, Path(models_dir))


def convert_hf(base: str, models_dir: Path) -> Path:
    """An HF model (folder or id in the local cache) as an f16 GGUF, converted once (atomic)."""
    from agent import llama_build

    name = re.sub(r"[^A-Za-z0-9._-]+", "_", base.strip("/"))[-80:]
    target = models_dir / f"{name}.f16.gguf"
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
                           "--outtype", "f16", "--outfile", str(tmp)], capture_output=True, text=True)
    if done.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"could not convert {base} to GGUF for llama.cpp: {done.stderr.strip()[-800:]}")
    tmp.rename(target)
    return target
