"""Uploads indexed in background jobs: one job a user at a time, its progress readable from any page load.

The Documents tab hands each upload to `IngestJobs.start`; the work (reading, chunking, embedding, writing to
Chroma) runs in its own thread, not in the request that started it, so a reload, a closed tab or a dropped
connection loses nothing, and the chat (its own queue) answers meanwhile. The upload request follows its job's
progress; a later page load or the Documents tab asks `status(owner)` and shows it.

    jobs = IngestJobs()
    job = jobs.start("user:7", "report.pdf", lambda progress: upload_files(kb, paths, progress, owner="user:7"))
    job.wait(0.5); job.fraction, job.desc   # while it runs
    jobs.status("user:7")                   # {"running", "label", "fraction", "desc", "message", ...} or None
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from agent.priority import lower_this_thread

log = logging.getLogger("kaizen.ingest")


class BusyError(RuntimeError):
    """The user already has an upload being indexed."""


@dataclass
class Job:
    owner: str
    label: str
    started: float = field(default_factory=time.time)
    fraction: float = 0.0
    desc: str = "starting"
    message: str | None = None  # the outcome in words, once done
    failed: bool = False
    finished: float | None = None
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the job is done (within `timeout` seconds)."""
        return self._done.wait(timeout)

    def progress(self, fraction: float, desc: str = "") -> None:
        """The work's progress callback: fraction in [0, 1] (never going back), and what it is doing."""
        self.fraction = max(self.fraction, min(1.0, max(0.0, float(fraction))))
        if desc:
            self.desc = desc

    def summary(self) -> dict:
        return {"running": self.running, "label": self.label, "fraction": round(self.fraction, 3),
                "desc": self.desc, "message": self.message, "failed": self.failed,
                "seconds": round((self.finished or time.time()) - self.started, 1)}


class IngestJobs:
    """At most one running job per owner; the last job of each owner is kept (its outcome) until the next one."""

    def __init__(self, niceness: int = 0):
        """`niceness`: added to each job thread's (KAIZEN_BACKGROUND_NICE in the app): embedding an upload yields
        the CPU to llama-server's answers (bench/chat_while_ingesting.py)."""
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.niceness = niceness

    def start(self, owner: str, label: str, work: Callable[[Callable], str]) -> Job:
        """Run `work(progress)` (it returns the outcome in words) in a thread as `owner`'s job. BusyError while
        `owner` has one running: nothing is started."""
        with self._lock:
            current = self._jobs.get(owner)
            if current is not None and current.running:
                raise BusyError(f"you already have an upload being indexed ({current.label}, "
                                f"{current.fraction:.0%}): wait for it to finish, then upload again. Nothing was "
                                "stored.")
            job = self._jobs[owner] = Job(owner, label)
        threading.Thread(target=self._run, args=(job, work, self.niceness), name="kaizen-ingest", daemon=True).start()
        return job

    @staticmethod
    def _run(job: Job, work: Callable[[Callable], str], niceness: int = 0) -> None:
        lower_this_thread(niceness)  # before the work's torch calls: the threads they start inherit it
        try:
            job.message = work(job.progress)
            job.progress(1.0, "done")
        except Exception as e:  # noqa: BLE001  the outcome is shown to the user; the app goes on
            log.exception("upload job of %s failed", job.owner)
            job.failed = True
            job.message = f"- refused: {type(e).__name__}: {e}"
        finally:
            job.finished = time.time()
            job._done.set()

    def status(self, owner: str) -> dict | None:
        """`owner`'s running job or last finished one, as a dict (see Job.summary); None when they had none."""
        with self._lock:
            job = self._jobs.get(owner)
        return job.summary() if job is not None else None

    def running(self) -> int:
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.running)


def status_text(status: dict | None) -> str | None:
    """The Documents tab's status line for a job (None: no job to speak of)."""
    if not status:
        return None
    if status["running"]:
        return (f"Indexing {status['label']} in the background: {status['fraction']:.0%} ({status['desc']}). "
                "You can chat meanwhile; this line updates until it is done.")
    return status["message"]
