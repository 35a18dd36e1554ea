"""Rate-limited logging of what a peer sends us: a flood of bad input is not a flood of lines.

A hostile or broken server can send thousands of bad frames a second; logging
each one would turn the worker's log (and disk) into the attack's amplifier.
:class:`LogLimiter` lets ``burst`` lines per category through in each
``window`` seconds, then counts the rest and says how many it suppressed in
the first line of the next window.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["LogLimiter"]


class LogLimiter:
    """At most *burst* records per category per *window* seconds, then a count.

    Args:
        logger: where the records go.
        burst: records let through per category and window.
        window: length of a window, in seconds.
        clock: the time source (``time.monotonic``; tests may pass another).
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 10,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._burst = burst
        self._window = window
        self._clock = clock
        # category -> (window start, records let through, records suppressed)
        self._state: dict[str, tuple[float, int, int]] = {}
        #: Records suppressed so far, all categories together.
        self.suppressed_total = 0

    def log(self, category: str, level: int, msg: str, *args: object) -> None:
        """Log ``msg % args`` at *level* unless *category* is over its budget."""
        if not self._logger.isEnabledFor(level):
            return
        now = self._clock()
        start, passed, suppressed = self._state.get(category, (now, 0, 0))
        if now - start >= self._window:
            if suppressed:
                self._logger.log(
                    level,
                    "%d similar message(s) (%s) suppressed in the last %.0f s",
                    suppressed,
                    category,
                    now - start,
                )
            start, passed, suppressed = now, 0, 0
        if passed < self._burst:
            self._logger.log(level, msg, *args, stacklevel=2)
            passed += 1
        else:
            suppressed += 1
            self.suppressed_total += 1
            if suppressed == 1:
                self._logger.log(
                    level,
                    "more %s messages in this %.0f s window will be counted, not logged",
                    category,
                    self._window,
                )
        self._state[category] = (start, passed, suppressed)
