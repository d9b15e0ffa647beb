"""One lock per memory: the same memory takes turns, different memories do not wait."""

from __future__ import annotations

import threading

from amfs_operator.locks import MemoryLocks


def test_same_memory_waits_other_memory_does_not() -> None:
    locks = MemoryLocks()
    entered = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with locks.hold("ns", "a"):
            entered.set()
            release.wait(10)
            order.append("first")

    def second() -> None:
        with locks.hold("ns", "a"):
            order.append("second")

    holder = threading.Thread(target=first)
    holder.start()
    assert entered.wait(10)
    waiter = threading.Thread(target=second)
    waiter.start()
    with locks.hold("ns", "b"):  # another memory: not blocked by "a"
        order.append("other")
    waiter.join(0.2)
    assert waiter.is_alive()  # still waiting for "a"
    release.set()
    holder.join(10)
    waiter.join(10)
    assert order == ["other", "first", "second"]


def test_forget_drops_the_lock() -> None:
    locks = MemoryLocks()
    with locks.hold("ns", "a"):
        pass
    assert len(locks) == 1
    locks.forget("ns", "a")
    locks.forget("ns", "never-seen")
    assert len(locks) == 0
