"""The Stop button's flags (ui.app.StopFlags): one per browser session, dropped when its generation ends."""
from types import SimpleNamespace

from ui.app import StopFlags


def session(name):
    return SimpleNamespace(session_hash=name)


def test_stop_reaches_only_its_own_session_and_flags_do_not_pile_up():
    flags = StopFlags()
    seen = {}

    def generation(name):
        def run(ev):
            for i in range(3):
                seen[name] = ev
                yield i
        return run

    a = flags.run(session("a"), generation("a"))
    b = flags.run(session("b"), generation("b"))
    assert next(a) == 0 and next(b) == 0 and len(flags) == 2
    flags.stop(session("a"))
    assert seen["a"].is_set() and not seen["b"].is_set()
    assert list(a) == [1, 2] and list(b) == [1, 2]
    assert len(flags) == 0  # both generations ended: nothing left behind
    flags.stop(session("a"))  # a Stop after the end is harmless


def test_a_newer_generation_of_the_same_session_keeps_its_flag_when_the_older_one_ends():
    flags = StopFlags()
    old = flags.run(session("a"), lambda ev: iter([ev]))
    first = next(old)
    new = flags.run(session("a"), lambda ev: iter([ev, ev]))
    second = next(new)
    list(old)  # the old one ends
    flags.stop(session("a"))
    assert second.is_set() and not first.is_set()
    list(new)
    assert len(flags) == 0
