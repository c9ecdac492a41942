"""Signals during training: SIGINT and SIGTERM become a flag the loop reads between steps.

Used by :func:`jaxnorm.train.fit_many` for the duration of a call, so that an
interrupted run stops where its files are consistent (status ``interrupted``, resumable)
instead of wherever Python next runs -- which, during the first compilation, tore the
process down with a segfault.
"""

from __future__ import annotations

import signal
import threading
from typing import Optional


class InterruptGuard:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (main thread only:
    elsewhere Python cannot install handlers, and the defaults stay).

    Why: the default SIGINT handler raises KeyboardInterrupt wherever Python next runs,
    which during the first compilation tore the process down with a segfault; a flag
    read between steps stops the run at a point where its files are consistent. A
    second signal raises at once (a user who insists)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} received twice")
        self.received = signum

    def check(self) -> None:
        """Raises KeyboardInterrupt if a signal arrived."""
        if self.received is not None:
            raise KeyboardInterrupt(f"{signal.Signals(self.received).name} received; stopped between steps")

    def adopt(self, signum: int) -> None:
        """Acts as if ``signum`` had arrived here (another process of a multi-process run
        received it: every process must stop at the same step)."""
        if self.received is None:
            self.received = signum

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
