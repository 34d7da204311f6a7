"""Fair sharing of the engine's decode slots between users.

`FairGate(slots)` lets at most `slots` answers decode at once. When a slot frees, it goes to the waiting request
whose user has the fewest answers running, then the user served longest ago, then the oldest request: one user's
extra requests wait behind their own, not behind everyone's, and a newcomer is served next even when someone else
queued ten answers.

`FairGate(slots, reserve=1)` keeps one more slot for a user who is not being served: nothing running and no answer
in the last `fresh_after` seconds (a newcomer, or someone back after reading). With every shared slot busy, such a
user starts at once instead of waiting for a busy answer to end: under 20 sessions that keep asking, a newcomer
waited up to a whole answer under load (1.2 s, 3.5 idle answer-lengths) for the next free slot, because answers
started together end together. The engine decodes `slots + reserve` answers at once (llama-server's `-np`).

`admit(user)` bounds what one user has running or waiting (`per_user`, KAIZEN_USER_MAX_GENERATIONS): hold it from
before anything of a request is stored to the end of its answer; past the limit it raises `Busy` (a ValueError, a
sentence for the user) and the request has done nothing.
"""
from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import Counter


FRESH_SLOTS = 1  # slots the server engines keep for fresh users, beside KAIZEN_PARALLEL's shared ones


class FairGate:
    def __init__(self, slots: int, per_user: int = 0, reserve: int = 0, fresh_after: float = 15.0,
                 clock=time.monotonic):
        if slots < 1 or reserve < 0:
            raise ValueError("slots must be >= 1 and reserve >= 0")
        self.slots = slots  # shared slots
        self.reserve = reserve  # slots only a fresh user takes (see the module's text)
        self.fresh_after = fresh_after
        self.per_user = per_user  # answers one user may have running or waiting; 0 = no limit
        self.admitted: Counter = Counter()  # user -> requests admitted and not finished
        self.running: Counter = Counter()  # user -> answers decoding
        self.reserved = 0  # answers decoding in reserved slots
        self.waiting: list[tuple[int, object]] = []  # (ticket, user), in arrival order
        self.last_served: dict = {}  # user -> ticket counter when they last got a slot
        self.last_done: dict = {}  # user -> clock() when their last answer ended
        self._tickets = itertools.count()
        self._clock = clock
        self._cond = threading.Condition()

    @property
    def capacity(self) -> int:
        """Answers decoded at once, at most: what the engine must run in parallel."""
        return self.slots + self.reserve

    def _next(self):
        """The waiter that gets the next free shared slot."""
        return min(self.waiting, key=lambda w: (self.running[w[1]], self.last_served.get(w[1], -1), w[0]),
                   default=None)

    def _fresh(self, user) -> bool:
        """Not being served: nothing running, and no answer of theirs ended in the last `fresh_after` seconds."""
        done = self.last_done.get(user)
        return not self.running[user] and (done is None or self._clock() - done >= self.fresh_after)

    def _place(self, me) -> str | None:
        """"shared" or "reserved" when `me` may start now, else None."""
        if sum(self.running.values()) - self.reserved < self.slots and self._next() == me:
            return "shared"
        if self.reserved < self.reserve and self._fresh(me[1]):
            first_fresh = next((w for w in self.waiting if self._fresh(w[1])), None)
            if first_fresh == me:
                return "reserved"
        return None

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
                while (place := self._place(me)) is None:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled()
                    # a fresh user's turn can also come with time (fresh_after), not only with a freed slot
                    self._cond.wait(0.25 if cancel is not None or self.reserve else None)
            finally:
                self.waiting.remove(me)
                self._cond.notify_all()
            self.running[user] += 1
            self.reserved += place == "reserved"
            self.last_served[user] = next(self._tickets)
        try:
            yield
        finally:
            with self._cond:
                self.reserved -= place == "reserved"
                self.last_done[user] = self._clock()
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
