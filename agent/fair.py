"""Fair sharing of the engine's decode slots between users.

`FairGate(slots)` lets at most `slots` answers decode at once. When a slot frees, it goes to the waiting request
whose user has the fewest answers running, then the user served longest ago, then the oldest request: one user's
extra requests wait behind their own, not behind everyone's, and a newcomer is served next even when someone else
queued ten answers.

`admit(user)` bounds what one user has running or waiting (`per_user`, KAIZEN_USER_MAX_GENERATIONS): hold it from
before anything of a request is stored to the end of its answer; past the limit it raises `Busy` (a ValueError, a
sentence for the user) and the request has done nothing.
"""
from __future__ import annotations

import contextlib
import itertools
import threading
from collections import Counter


class FairGate:
    def __init__(self, slots: int, per_user: int = 0):
        if slots < 1:
            raise ValueError("slots must be >= 1")
        self.slots = slots
        self.per_user = per_user  # answers one user may have running or waiting; 0 = no limit
        self.admitted: Counter = Counter()  # user -> requests admitted and not finished
        self.running: Counter = Counter()  # user -> answers decoding
        self.waiting: list[tuple[int, object]] = []  # (ticket, user), in arrival order
        self.last_served: dict = {}  # user -> ticket counter when they last got a slot
        self._tickets = itertools.count()
        self._cond = threading.Condition()

    def _next(self):
        """The waiter that gets the next free slot."""
        return min(self.waiting, key=lambda w: (self.running[w[1]], self.last_served.get(w[1], -1), w[0]),
                   default=None)

    @contextlib.contextmanager
    def admit(self, user):
        """Count one request of `user` (any hashable) until the block ends; Busy when they already have `per_user`."""
        with self._cond:
            if self.per_user and self.admitted[user] >= self.per_user:
                n = self.per_user
                raise Busy(f"you already have {n} answer{'s' if n > 1 else ''} running or waiting (the limit is {n} "
                           "per user): wait for one to finish, or stop it, then ask again. Nothing was saved.")
            self.admitted[user] += 1
        try:
            yield
        finally:
            self._drop(self.admitted, user)

    @contextlib.contextmanager
    def slot(self, user, cancel: threading.Event | None = None):
        """Hold one decode slot for `user` (any hashable). A set `cancel` gives up waiting (nothing yielded)."""
        me = (next(self._tickets), user)
        with self._cond:
            self.waiting.append(me)
            try:
                while not (sum(self.running.values()) < self.slots and self._next() == me):
                    if cancel is not None and cancel.is_set():
                        raise Cancelled()
                    self._cond.wait(0.25 if cancel is not None else None)
            finally:
                self.waiting.remove(me)
                self._cond.notify_all()
            self.running[user] += 1
            self.last_served[user] = next(self._tickets)
        try:
            yield
        finally:
            self._drop(self.running, user)

    def _drop(self, counter: Counter, user) -> None:
        with self._cond:
            counter[user] -= 1
            if counter[user] <= 0:
                del counter[user]
            self._cond.notify_all()


class Busy(ValueError):
    """The user is at their limit of answers running or waiting; nothing of the request was done."""


class Cancelled(Exception):
    """The request was stopped while it waited for a slot."""
