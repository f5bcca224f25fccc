import asyncio
import threading

from glimpse.engine.mailbox import LoopMailbox


async def test_a_burst_from_another_thread_wakes_the_loop_once_and_keeps_each_queues_order():
    loop = asyncio.get_running_loop()
    wakeups = 0
    real = loop.call_soon_threadsafe

    def counted(callback, *args):
        nonlocal wakeups
        wakeups += 1
        return real(callback, *args)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    try:
        mailbox = LoopMailbox(loop)
        first, second = asyncio.Queue(), asyncio.Queue()

        def one_step() -> None:  # as the engine thread sends a step's tokens for two requests
            for index in range(50):
                mailbox.post(first, ("a", index))
                mailbox.post(second, ("b", index))

        worker = threading.Thread(target=one_step)
        worker.start()
        worker.join()
        assert wakeups == 1  # the loop had not run yet: every item rides on one wake-up
        got_first = [await first.get() for _ in range(50)]
        got_second = [await second.get() for _ in range(50)]
        assert got_first == [("a", i) for i in range(50)]
        assert got_second == [("b", i) for i in range(50)]
        mailbox.post(first, "later")  # once delivered, the next post wakes the loop again
        assert wakeups == 2
        assert await first.get() == "later"
    finally:
        del loop.call_soon_threadsafe


def test_posting_to_a_closed_loop_says_nobody_listens():
    loop = asyncio.new_event_loop()
    queue: asyncio.Queue[int] = asyncio.Queue()
    mailbox = LoopMailbox(loop)
    loop.close()
    assert mailbox.post(queue, 1) is False
    assert mailbox.post(queue, 2) is False  # and stays consistent afterwards
