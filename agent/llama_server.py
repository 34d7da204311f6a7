"""Supervise `llama-server` processes on loopback: the llama.cpp engine's continuous-batching backend.

llama-server loads LoRA adapters only at start, so a new set of adapters means a new process: `LlamaServer.ensure`
starts it beside the running one, waits until it is healthy, routes new requests to it, and stops the old one once
its last answer in flight has finished (no answer is cut). Each process serves the base GGUF with every adapter
loaded at scale 0 (`--lora-init-without-apply`); a request picks its adapter with `lora: [{id, scale}]`.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import signal
import os
import socket
import subprocess
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from agent import llama_build

log = logging.getLogger(__name__)
# Servers are spawned from one long-lived thread with PR_SET_PDEATHSIG, so a llama-server never outlives the app,
# even one killed with SIGKILL (the signal follows the spawning thread, hence one thread that lives as long).
_SPAWN = ThreadPoolExecutor(1, thread_name_prefix="kaizen-spawn")


try:  # looked up here, in the parent: loading a library in the forked child of a threaded process is unsafe
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the atexit handler below still stops the servers
    _PRCTL = None
_RUNNING: "weakref.WeakSet[ServerProcess]" = weakref.WeakSet()


def _die_with_parent() -> None:
    """In the child before exec: no signal blocked (a mask inherited from a server thread that blocks SIGTERM would
    make llama-server deaf to it), a process group of its own (a terminal's Ctrl-C is the app's to handle), and
    killed when the spawning thread, i.e. the app, is gone."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    os.setpgid(0, 0)
    if _PRCTL is not None:
        _PRCTL(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


@atexit.register
def _stop_all() -> None:
    for proc in list(_RUNNING):
        with contextlib.suppress(Exception):
            proc.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(binary: Path, gguf: Path, loras: list[Path], *, port: int, parallel: int, threads: int,
                   ctx_per_slot: int, extra: list[str] = ()) -> list[str]:
    """The llama-server command line. Pure."""
    cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
           "-np", str(parallel), "-c", str(ctx_per_slot * parallel), "-t", str(threads), "-tb", str(threads),
           "--no-webui", "--no-warmup", "-ngl", "0"]
    for lora in loras:
        cmd += ["--lora", str(lora)]
    if loras:
        cmd.append("--lora-init-without-apply")  # the bare base unless a request asks for an adapter
    return cmd + list(extra)


@dataclass(eq=False)  # compared (and hashed) by identity: one object per process
class ServerProcess:
    """One running llama-server. `loras` is the adapter order: an adapter's id is its index."""

    cmd: list[str]
    url: str
    loras: tuple[str, ...]  # adapter names, in id order
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    inflight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, timeout_s: float = 120.0) -> "ServerProcess":
        env = llama_build.server_env(Path(self.cmd[0]).parent, dict(os.environ))
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:  # in the app's session (not start_new_session): in a session of its own it would take half the CPU
            # from the app's lowered background threads, whatever their nice (agent/priority.py: autogroups)
            self.proc = _SPAWN.submit(subprocess.Popen, self.cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                      preexec_fn=_die_with_parent).result()
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # the child holds its own copy
        _RUNNING.add(self)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with code {self.proc.returncode} at start: "
                                   f"{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"llama-server did not become healthy in {timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, chars: int = 1500) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-chars:]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class LlamaServer:
    """The one llama-server the llama.cpp engine talks to, restarted gracefully when its adapter set changes."""

    def __init__(self, gguf: Path, *, parallel: int = 4, threads: int = 2, ctx_per_slot: int = 2048,
                 log_dir: Path | None = None, extra: list[str] = (), reserve: int = 0):
        """`parallel` shared slots plus `reserve` kept for fresh users (agent/fair.py): `-np parallel+reserve`."""
        self.gguf = Path(gguf)
        self.parallel, self.threads, self.ctx_per_slot = parallel, threads, ctx_per_slot
        self.reserve = reserve
        self.log_dir = Path(log_dir) if log_dir else None
        self.extra = list(extra)
        self.current: ServerProcess | None = None
        self._lock = threading.Lock()
        self._retiring: list[ServerProcess] = []
        self.restarts = 0

    def ensure(self, loras: dict[str, Path]) -> ServerProcess:
        """A healthy server with exactly these adapters (name -> GGUF LoRA), started if need be."""
        with self._lock:
            return self._ensure(loras)

    def _ensure(self, loras: dict[str, Path]) -> ServerProcess:
        names = tuple(sorted(loras))
        cur = self.current
        if cur is not None and cur.alive() and cur.loras == names:
            return cur
        binary = llama_build.server_binary()
        if not binary.exists():
            llama_build.require()
        port = free_port()
        log_path = None
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / "llama-server.log"
        cmd = server_command(binary, self.gguf, [loras[n] for n in names], port=port,
                             parallel=self.parallel + self.reserve, threads=self.threads,
                             ctx_per_slot=self.ctx_per_slot,
                             extra=llama_build.server_args(binary.parent) + self.extra)
        new = ServerProcess(cmd, f"http://127.0.0.1:{port}", names, log_path=log_path).start()
        self.current = new
        if cur is not None:
            self.restarts += 1
            self._retire(cur)
        log.info("llama-server on %s with adapters %s", new.url, list(names) or "none")
        return new

    def _retire(self, old: ServerProcess) -> None:
        """Stop `old` once its answers in flight are done (checked in a short-lived thread)."""
        def wait_then_stop():
            while True:
                with old.lock:
                    if old.inflight == 0:
                        break
                time.sleep(0.05)
            old.stop()

        threading.Thread(target=wait_then_stop, name="kaizen-llama-retire", daemon=True).start()

    @contextlib.contextmanager
    def lease(self, loras: dict[str, Path]):
        """A server for one request; it is not stopped while the request holds it."""
        with self._lock:  # held while counting, so a restart cannot retire it in between
            proc = self._ensure(loras)
            with proc.lock:
                proc.inflight += 1
        try:
            yield proc
        finally:
            with proc.lock:
                proc.inflight -= 1

    def close(self) -> None:
        with self._lock:
            if self.current is not None:
                self.current.stop()
                self.current = None
