"""Grounded answers that quote their sources: llama-server's samplers over the answer only (the patched server the
Makefile builds, scripts/llama-server-samplers-see-the-answer-only.patch) vs over prompt + answer (upstream), in one
run: the same prompts, the same GGUF, the same decoding (the app's: greedy with DRY for the n-gram rule).

Upstream llama-server feeds every prompt token to its samplers, so DRY (and the repeat penalties) punish an answer
for extending a sequence its prompt holds: a RAG answer cannot copy "leaves Port Amberly at 07:45" from its sources
(the app answered "The Zephyre Line ferry leaves Gull Island at 9:15."). Prompts: N answerable SQuAD dev questions
(seeded sample), each with its own paragraph as the one source, rendered by the `grounded` template as the app
renders it (retrieval left out: this measures the decoding). Metric: the answer contains a gold answer
(case-insensitive, bench/rag_squad.py's), and the share of answers that copy 6+ words of the paragraph verbatim.

The upstream server is built once from the same tree with the patch reversed (the patch is put back after; the
served bin/ folder is never touched): ~30 s on 2 cores. Prints JSON.

  .venv/bin/python bench/grounded_quotes.py [--questions 100] [--tokens 48]
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from agent.offline import silence  # noqa: E402

silence()

from agent import llama_build  # noqa: E402
from agent.decoding import served_decoding  # noqa: E402
from agent.ranking import Hit, format_sources  # noqa: E402
from agent.settings import Settings  # noqa: E402
from agent.templates import load_templates  # noqa: E402
from rag_squad import DATA, contains_gold, load_squad  # noqa: E402

RESULTS = """
2026-12-06, one run, 2 CPU cores (AVX-512 Xeon), SmolLM2-135M Q8_0, 100 questions, 48 new tokens, greedy + DRY:
                          contains gold   copies 6+ words of the paragraph
  answer only (patched)       42%              35%
  prompt + answer (upstream)  30%              13%
  e.g. "When did the European Anti-Fraud Office investigate John Dalli?" (gold 2012): patched "... in 2012.";
  upstream "The European Anti-FraudOffice investigated John Dalli in 2013, ..." (252 s for the 200 answers)
"""


def upstream_server() -> Path:
    """A folder with llama-server built from the cached tree without the patch (built once, kept beside bin/)."""
    root = llama_build.llama_dir()
    out = root / "upstream-bin"
    if (out / "llama-server").exists():
        return out
    # git apply outside a repository works like patch(1); run from `root` (src/ has a stale .git file of the sdist)
    patch = ["git", "apply", "--directory=src", str(llama_build.PATCHES[0])]  # the samplers patch only
    build = ["cmake", "--build", str(root / "build"), "--target", "llama-server"]
    subprocess.run(patch + ["-R"], cwd=root, check=True)
    try:
        subprocess.run(build, check=True, stdout=subprocess.DEVNULL)
        tmp = Path(tempfile.mkdtemp(dir=root))
        for f in (root / "build" / "bin").iterdir():
            if f.name == "llama-server" or ".so" in f.name:
                shutil.copy2(f, tmp / f.name, follow_symlinks=False)
        tmp.rename(out)
    finally:
        subprocess.run(patch, cwd=root, check=True)
        subprocess.run(build, check=True, stdout=subprocess.DEVNULL)
    return out


def copies(answer: str, paragraph: str, words: int = 6) -> bool:
    """The answer repeats `words` consecutive words of the paragraph verbatim."""
    a, p = re.findall(r"\w+", answer.lower()), " ".join(re.findall(r"\w+", paragraph.lower()))
    return any(" ".join(a[i:i + words]) in p for i in range(len(a) - words + 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from agent.engine import open_engine
    from agent.engine_http import HTTPEngine
    from agent.llama_server import ServerProcess, free_port, server_command

    paragraphs, questions = load_squad(DATA / "squad2")
    random.Random(args.seed).shuffle(questions)
    sample = questions[:args.questions]
    grounded = load_templates()["grounded"]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(data_dir=Path(tmp) / "data", engine="llamacpp", parallel=1)
        decoding = served_decoding(settings, temperature=0.0)
        patched = open_engine(settings)
        bin_dir = upstream_server()
        port = free_port()
        upstream = ServerProcess(server_command(bin_dir / "llama-server", patched.server.gguf, [], port=port,
                                                parallel=1, threads=settings.threads or 2, ctx_per_slot=4096),
                                 f"http://127.0.0.1:{port}", ()).start()
        plain = HTTPEngine(patched.tok, name="upstream", dialect="llama", url=upstream.url)
        engines = {"answer_only": patched, "prompt_and_answer": plain}
        hits = {k: 0 for k in engines}
        copied = {k: 0 for k in engines}
        differ, t0 = [], time.perf_counter()
        try:
            for q in sample:
                para = paragraphs[q["key"]]
                sources = format_sources([Hit(q["key"], "squad.txt", 0, 1.0, para, shared=True)])
                messages = grounded.render(q["question"], [], sources=sources)
                got = {}
                for name, eng in engines.items():
                    gen = eng.stream(messages, max_new_tokens=args.tokens, decoding=decoding, adapter=None)
                    list(gen)
                    got[name] = gen.text.strip()
                    hits[name] += contains_gold(got[name], q["answers"])
                    copied[name] += copies(got[name], para)
                if got["answer_only"] != got["prompt_and_answer"] and len(differ) < 5:
                    differ.append({"question": q["question"], "gold": q["answers"][:2], **got})
        finally:
            upstream.stop()
            patched.close()
    n = len(sample)
    print(json.dumps({
        "questions": n, "max_new_tokens": args.tokens, "gguf": patched.server.gguf.name,
        "decoding": {"temperature": decoding.temperature, "loop_rule": decoding.loop_rule,
                     "dry": decoding.dry().body() if decoding.dry() else None},
        "contains_gold": {k: round(v / n, 4) for k, v in hits.items()},
        "copies_6_words": {k: round(v / n, 4) for k, v in copied.items()},
        "seconds": round(time.perf_counter() - t0, 1), "examples_that_differ": differ}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
