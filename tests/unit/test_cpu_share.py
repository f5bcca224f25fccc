"""Sharing a small machine: torch gets every core but one; threads other than the loop's run nicer."""

from __future__ import annotations

import os
import threading

import pytest

from glimpse.cpu_share import ThreadNicer, cpu_threads


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 1), (16, 15)])
def test_the_engine_leaves_one_core_to_the_event_loop(cores, expected):
    assert cpu_threads(None, cores) == expected


def test_an_explicit_thread_count_wins():
    assert cpu_threads(4, 2) == 4


@pytest.mark.skipif(not ThreadNicer.supported(), reason="per-thread niceness is Linux's")
def test_a_sweep_renices_new_threads_once_and_leaves_the_loop_alone():
    started, stop = threading.Event(), threading.Event()
    tids: list[int] = []

    def work() -> None:
        tids.append(threading.get_native_id())
        started.set()
        stop.wait(10)

    loop_tid = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, loop_tid)
    nicer = ThreadNicer(3, keep=loop_tid)
    nicer.sweep()  # threads that already existed (pytest's, if any) are not this test's concern
    worker = threading.Thread(target=work)
    worker.start()
    try:
        started.wait(5)
        worker_before = os.getpriority(os.PRIO_PROCESS, tids[0])
        assert nicer.sweep() == 1
        assert os.getpriority(os.PRIO_PROCESS, tids[0]) == min(19, worker_before + 3)
        assert nicer.sweep() == 0  # seen: not reniced again
        assert os.getpriority(os.PRIO_PROCESS, loop_tid) == before
    finally:
        stop.set()
        worker.join()


def test_nothing_starts_when_nice_is_zero():
    nicer = ThreadNicer(0)
    nicer.start()
    assert nicer._thread is None
