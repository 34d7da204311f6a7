"""The chat goes first: the app's background work (training, evaluation, the lab, indexing uploads) runs at a lower
CPU priority than llama-server's answers, which share the machine's few cores with it.

    background(child.pid, settings.background_nice)   # a just-started child process, and its session
    lower_this_thread(settings.background_nice)        # the calling thread (an upload's indexing job)

Linux's autogroups (kernel.sched_autogroup_enabled, on by default in many kernels) share the CPU between sessions
first and apply a nice value only within a session. So a child that leads a session of its own gets that session's
nice too (/proc/PID/autogroup), and llama-server runs in the app's own session (agent/llama_server.py): a thread of
the app lowered here then yields to llama-server's threads instead of taking half the CPU as another session would.
Raising niceness needs no privilege; where it is refused anyway the work runs as it is."""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)


def _add_nice(task: int, niceness: int) -> None:
    """`niceness` more for a process's main thread or a thread (Linux: PRIO_PROCESS names a task), 19 at most."""
    os.setpriority(os.PRIO_PROCESS, task, min(19, os.getpriority(os.PRIO_PROCESS, task) + niceness))


def background(pid: int, niceness: int) -> None:
    """Lower the CPU priority of a just-started child (training, evaluation, the lab) by `niceness`: beside a
    training run at the same priority llama.cpp decoded at 3% of its idle speed (bench/chat_while_training.py).
    The child's own niceness and, when it leads a session of its own (start_new_session), that session's. Called
    right after the child's exec, before it imports torch: the threads it starts inherit the value."""
    if niceness <= 0:
        return
    try:
        _add_nice(pid, niceness)
        group = Path(f"/proc/{pid}/autogroup")
        if os.getsid(pid) == pid and group.exists():  # its own session, so its own autogroup: only it and its children
            group.write_text(str(min(19, niceness)))
    except OSError as e:  # the child already gone, or a system without these
        log.warning("could not lower the priority of process %s: %s", pid, e)


def lower_this_thread(niceness: int) -> None:
    """Lower the calling thread's CPU priority by `niceness` (Linux: a nice value is a thread's own). Call it first
    thing in a thread made for the work, before it runs torch: the threads torch's OpenMP starts for it inherit the
    value, and the thread ends with its work (a lowered thread is never reused for a request)."""
    if niceness <= 0:
        return
    try:
        _add_nice(threading.get_native_id(), niceness)
    except OSError as e:
        log.warning("could not lower the priority of thread %s: %s", threading.current_thread().name, e)
