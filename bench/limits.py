"""A wall-clock limit on a plugin call, by ``SIGALRM`` (main thread only).

Python code is interrupted at the next bytecode after the limit; a long single C
call (one huge matrix product, one LP) finishes first, then the call is abandoned.
Off the main thread, or with no limit, the call runs unlimited.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

# The longest timeout an instance may have (VNN-COMP's are minutes): a limit beyond what
# the alarm timer can hold (1e300 s) is refused when read, not an ``error`` later.
MAX_INSTANCE_TIMEOUT = 1e6


class PluginTimeout(BaseException):
    """The plugin call ran past its time limit.

    A ``BaseException`` (like ``KeyboardInterrupt``), so a plugin's ``except Exception``
    cannot swallow it and report a late result as ``ok``.
    """


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):  # noqa: ARG001 - signal handler signature
        raise PluginTimeout(f"time limit of {seconds:g} s exceeded")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
