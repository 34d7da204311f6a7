"""Upload jobs (agent/ingest_jobs.py): the work runs in its own thread, one job a user at a time, progress never
goes back, a failure is an outcome in words, and each user sees only their own job. Pure: real threads, no model."""
import os
import threading

import pytest

from agent.ingest_jobs import BusyError, IngestJobs, status_text


def test_a_job_runs_in_its_own_thread_and_reports_progress_then_its_outcome():
    jobs, gate, seen = IngestJobs(), threading.Event(), []

    def work(progress):
        seen.append(threading.current_thread().name)
        progress(0.4, "embedding big.txt")
        progress(0.2)  # a smaller fraction never moves the bar back
        gate.wait(5)
        return "- `big.txt`: added, 40 chunks"

    job = jobs.start("user:1", "big.txt", work)
    assert not job.wait(0.2)  # start() returned while the work runs
    now = jobs.status("user:1")
    assert now["running"] and now["fraction"] == 0.4 and now["desc"] == "embedding big.txt"
    assert "in the background: 40%" in status_text(now) and "chat meanwhile" in status_text(now)
    assert jobs.running() == 1
    gate.set()
    assert job.wait(5)
    done = jobs.status("user:1")
    assert not done["running"] and done["fraction"] == 1.0 and not done["failed"]
    assert status_text(done) == "- `big.txt`: added, 40 chunks"
    assert seen == ["kaizen-ingest"] and jobs.running() == 0


def test_one_job_a_user_at_a_time_and_others_go_on_meanwhile():
    jobs, gate = IngestJobs(), threading.Event()
    first = jobs.start("user:1", "a.txt", lambda p: gate.wait(5) and "a done")
    with pytest.raises(BusyError, match="already have an upload being indexed \\(a.txt"):
        jobs.start("user:1", "b.txt", lambda p: "b done")
    other = jobs.start("user:2", "c.txt", lambda p: "c done")  # another user is not held back
    assert other.wait(5) and jobs.status("user:2")["message"] == "c done"
    assert jobs.status("user:1")["label"] == "a.txt" and jobs.status("user:3") is None  # nobody else's job
    gate.set()
    assert first.wait(5)
    again = jobs.start("user:1", "b.txt", lambda p: "b done")  # free again once the first is done
    assert again.wait(5) and jobs.status("user:1")["message"] == "b done"


def test_a_failing_job_is_an_outcome_in_words_and_frees_the_user():
    jobs = IngestJobs()

    def work(progress):
        raise OSError("disk full")

    job = jobs.start("user:1", "x.txt", work)
    assert job.wait(5)
    st = jobs.status("user:1")
    assert st["failed"] and not st["running"] and "disk full" in st["message"] and "refused" in st["message"]
    assert jobs.start("user:1", "y.txt", lambda p: "ok").wait(5)


def test_a_job_runs_below_the_app_and_the_threads_it_starts_inherit_it():
    """The app's jobs run at KAIZEN_BACKGROUND_NICE more than the app (agent/priority.py), and so do the threads
    their work starts (torch's): embedding an upload yields the CPU to llama-server's answers
    (bench/chat_while_ingesting.py: decode 0.05x idle beside a job at +0, 0.84x beside one at +19)."""
    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    mine, seen = nice(), {}

    def work(progress):
        seen["job"] = nice()
        worker = threading.Thread(target=lambda: seen.setdefault("started by it", nice()))
        worker.start()
        worker.join()
        return "ok"

    assert IngestJobs(niceness=5).start("user:1", "a.txt", work).wait(5)
    assert seen == {"job": min(19, mine + 5), "started by it": min(19, mine + 5)}, (mine, seen)
    assert nice() == mine  # the app's own threads keep their priority
    seen.clear()
    assert IngestJobs().start("user:1", "a.txt", work).wait(5)  # niceness 0: as the app
    assert seen == {"job": mine, "started by it": mine}
