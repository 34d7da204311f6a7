"""Chatting while an upload is indexed: the llama.cpp engine's time to first token and decode speed while the app's
upload job (agent/ingest_jobs.py: chunking and MiniLM embedding in a thread of the app) indexes a big document,
with the job's thread at niceness +0 and +19 (KAIZEN_BACKGROUND_NICE: 19 by default), against the chat with
nothing else running. llama-server runs in the app's session, as the app starts it. One run, the conditions
interleaved round by round, medians. Prints JSON; --out also writes it.

    python bench/chat_while_ingesting.py [--data-dir DIR] [--rounds 2] [--questions 3] [--new-tokens 64]
                                         [--nice 0,19] [--paragraphs 600] [--out FILE]

The document: SQuAD 2.0 dev paragraphs (../shared/data/squad2), ~500 KB of text, new each time (a numbered
heading), so every upload embeds all of its chunks. The questions: real prompts of the lottery (its first 100)."""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chat_while_training import chat, chat_beside_args, conditions, interleaved, report  # noqa: E402
from rag_squad import load_squad  # noqa: E402
from system_prompts import DATA, lottery_prompts  # noqa: E402

from agent.offline import silence  # noqa: E402

silence()  # the offline, no-telemetry environment, before gradio and the model libraries load

from agent.settings import Settings  # noqa: E402



def document(paragraphs: int) -> str:
    """The first `paragraphs` SQuAD 2.0 dev paragraphs, in order (rag_squad's loader keys dev's before test's)."""
    return "\n\n".join(list(load_squad(DATA / "squad2")[0].values())[:paragraphs])


def while_ingesting(engine, kb, text: str, nice: int, questions, new_tokens: int) -> dict:
    from agent.ingest_jobs import IngestJobs

    jobs = IngestJobs(niceness=nice)
    job = jobs.start("bench", "squad.txt", lambda progress: str(kb.add_text(text, "squad.txt", progress=progress,
                                                                           owner="bench")))
    while job.running and job.fraction < 0.05:  # the chunking is behind it, the embedding under way
        time.sleep(0.05)
    t0 = time.perf_counter()
    rows = chat(engine, questions, new_tokens)
    during = job.running
    job.wait()
    return {"rows": rows, "still_indexing_at_the_end": during, "window_s": round(time.perf_counter() - t0, 2),
            "job_s": round(job.finished - job.started, 1), "failed": job.message if job.failed else None}


def main() -> None:
    ap = chat_beside_args(__doc__, questions=3, nice="0,19")
    ap.add_argument("--paragraphs", type=int, default=600)
    ap.add_argument("--out")
    args = ap.parse_args()
    from agent.engine import open_engine
    from agent.retrieval import KnowledgeBase

    over = {"data_dir": Path(args.data_dir)} if args.data_dir else {}
    settings = Settings.from_env(engine="llamacpp", **over)
    engine = open_engine(settings)
    prompts = lottery_prompts(100)
    base_text = document(args.paragraphs)
    with tempfile.TemporaryDirectory() as tmp:
        kb = KnowledgeBase.from_settings(Settings(data_dir=Path(tmp) / "data"))
        kb.embedder.embed(["warm-up"])

        def beside(nice: int, r: int, questions: list[str]) -> dict:
            return while_ingesting(engine, kb, f"# copy ingest_nice_{nice} {r}\n\n" + base_text, nice, questions,
                                   args.new_tokens)

        results, jobs = interleaved(engine, prompts, args, "ingest_nice", beside)
    out = {"bench": "chat_while_ingesting", "rounds": args.rounds, "questions": args.questions,
           "new_tokens": args.new_tokens, "threads": settings.threads, "characters": len(base_text),
           "conditions": conditions(results)}
    for name, runs in jobs.items():
        out["conditions"][name].update({
            "indexing_s": [j["job_s"] for j in runs], "chat_window_s": [j["window_s"] for j in runs],
            "chat_ended_before_indexing": sum(j["still_indexing_at_the_end"] for j in runs),
            "failed": [j["failed"] for j in runs if j["failed"]]})
    report(out, args.out)


if __name__ == "__main__":
    main()
