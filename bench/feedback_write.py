"""Benchmark: the UI write path `Store.rate` with 1 and 8 concurrent writer threads, against a baseline.

Baseline (same run, interleaved): a raw `sqlite3` INSERT in autocommit mode on an equivalent table, same pragmas
(WAL, same synchronous, busy_timeout 5000), one connection per thread. Two load shapes:
- saturated: every writer calls in a tight loop (maximum events/s; latency then includes GIL and CPU queueing),
- paced: every writer issues one event per `--pace-ms` (default 5 ms: 200/s per writer, far above real clicks);
  this is the UI latency the goal is about.
Each round runs every configuration for `--seconds`; figures are medians over rounds. Prints JSON.
Goal: Store.rate p99 <= 5 ms with 1 and 8 paced writers.

    .venv/bin/python bench/feedback_write.py [--rounds 3] [--seconds 2] [--pace-ms 5] [--synchronous NORMAL|FULL]
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.offline import silence  # noqa: E402

silence()  # the offline, no-telemetry environment, before gradio and the model libraries load
from feedback.store import Store, now_iso  # noqa: E402

GOAL_P99_MS = 5.0


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))]


def _run_threads(n: int, seconds: float, make_op, pace_s: float = 0.0) -> dict:
    """Start n threads, each calling its op in a loop for `seconds` (one call per `pace_s` when > 0)."""
    ops = [make_op(i) for i in range(n)]
    lat: list[list[float]] = [[] for _ in range(n)]
    start = threading.Barrier(n + 1)

    def loop(i):
        op, out = ops[i], lat[i]
        start.wait()
        end = time.perf_counter() + seconds
        due = time.perf_counter() + pace_s * i / max(n, 1)  # stagger the writers
        while (t0 := time.perf_counter()) < end:
            if pace_s and t0 < due:
                time.sleep(due - t0)
                t0 = time.perf_counter()
            op()
            out.append(time.perf_counter() - t0)
            due += pace_s

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    t_start = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    flat = sorted(x for per in lat for x in per)
    return {"events": len(flat), "events_per_s": len(flat) / wall, "p50_ms": _percentile(flat, 0.50) * 1e3,
            "p99_ms": _percentile(flat, 0.99) * 1e3, "max_ms": flat[-1] * 1e3}


def store_op_factory(store: Store):
    def make(i: int):
        uid = store.ensure_user(f"bench-writer-{i}")
        conv = store.new_conversation(uid, "bench")
        q = store.add_message(conv, "user", "How do I enable WAL?", user_id=uid)
        a = store.add_message(conv, "assistant", "PRAGMA journal_mode=WAL.", user_id=uid, adapter="bench")
        state = {"v": 1}

        def op():
            state["v"] = -state["v"]
            store.rate(a, uid, state["v"], ["wrong"] if state["v"] < 0 else [], "bench comment")

        assert q
        return op

    return make


def raw_op_factory(path: Path, synchronous: str):
    def make(i: int):
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5)
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute(f"PRAGMA synchronous={synchronous}")

        def op():
            conn.execute("INSERT INTO ratings (message_id, user_id, value, reasons, comment, created) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (1, i, -1, '["wrong"]', "bench comment", now_iso()))

        return op

    return make


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0, help="per configuration and round")
    p.add_argument("--writers", type=int, nargs="+", default=[1, 8])
    p.add_argument("--pace-ms", type=float, default=5.0, help="paced load: one event per writer every N ms")
    p.add_argument("--synchronous", default="NORMAL", choices=["NORMAL", "FULL"])
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="kaizen-bench-") as tmp:
        store = Store(Path(tmp) / "store.db", synchronous=args.synchronous)
        raw_path = Path(tmp) / "raw.db"
        raw = sqlite3.connect(raw_path, isolation_level=None)
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("CREATE TABLE ratings (id INTEGER PRIMARY KEY, message_id INTEGER NOT NULL, user_id INTEGER NOT "
                    "NULL, value INTEGER NOT NULL, reasons TEXT NOT NULL, comment TEXT NOT NULL, created TEXT NOT NULL)")
        raw.close()
        shapes = {"saturated": 0.0, "paced": args.pace_ms / 1000}
        configs = [(shape, kind, n) for shape in shapes for n in args.writers for kind in ("store", "raw_sqlite")]
        rounds: dict[tuple, list[dict]] = {c: [] for c in configs}
        for r in range(args.rounds):
            order = configs if r % 2 == 0 else configs[::-1]  # interleave, alternate the order
            for shape, kind, n in order:
                factory = store_op_factory(store) if kind == "store" else raw_op_factory(raw_path, args.synchronous)
                rounds[(shape, kind, n)].append(_run_threads(n, args.seconds, factory, shapes[shape]))
        store.close()

    results: dict = {shape: {"store": {}, "raw_sqlite": {}} for shape in shapes}
    for (shape, kind, n), runs in rounds.items():
        row = {k: round(statistics.median(run[k] for run in runs), 4)
               for k in ("events_per_s", "p50_ms", "p99_ms", "max_ms")}
        row["events"] = sum(run["events"] for run in runs)
        results[shape][kind][str(n)] = row
    ratios = {shape: {n: {"p99_store_over_raw": round(res["store"][n]["p99_ms"] / res["raw_sqlite"][n]["p99_ms"], 2),
                          "throughput_store_over_raw": round(res["store"][n]["events_per_s"]
                                                            / res["raw_sqlite"][n]["events_per_s"], 3)}
                      for n in map(str, args.writers)}
              for shape, res in results.items()}
    paced_p99 = max(results["paced"]["store"][n]["p99_ms"] for n in map(str, args.writers))
    saturated_p99 = max(results["saturated"]["store"][n]["p99_ms"] for n in map(str, args.writers))
    print(json.dumps({
        "benchmark": "feedback_write", "op": "Store.rate (UI path)", "baseline": "raw sqlite3 INSERT, autocommit",
        "synchronous": args.synchronous, "rounds": args.rounds, "seconds_per_config": args.seconds,
        "pace_ms": args.pace_ms, "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "sqlite": sqlite3.sqlite_version,
        "results": results, "ratios": ratios,
        "goal": {"p99_ms": GOAL_P99_MS, "paced_worst_store_p99_ms": paced_p99, "met": paced_p99 <= GOAL_P99_MS,
                 "saturated_worst_store_p99_ms": saturated_p99},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
