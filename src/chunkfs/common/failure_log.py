"""Logging a failure that a timer retries: said at once, then now and then, and its end said once.

A background task that retries every few seconds (the metadata store's
checkpoint on a full disk, say) would otherwise write the same WARNING every
few seconds for as long as the condition lasts, burying what else happens in
the log.  The first failure is a WARNING; while it goes on, one WARNING per
`every` seconds says how many times it failed since; the first success after
failures is an INFO line, so the operator sees when it was over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

#: Seconds between two WARNINGs about the same ongoing failure.
REPEAT_EVERY = 60.0


class FailureLog:
    def __init__(self, logger: logging.Logger, what: str, every: float = REPEAT_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.what = what
        self.every = every
        self.clock = clock
        #: Failures since the last success, and since the last WARNING.
        self.failures = 0
        self._unsaid = 0
        self._first = self._said = 0.0

    def failed(self, why: object) -> None:
        now = self.clock()
        self.failures += 1
        if self.failures == 1:
            self._first = self._said = now
            self.logger.warning("%s failed: %s", self.what, why)
            return
        self._unsaid += 1
        if now - self._said >= self.every:
            self.logger.warning("%s failed again: %s (%d times in the last %.0f s; failing for %.0f s)",
                                self.what, why, self._unsaid, now - self._said, now - self._first)
            self._said, self._unsaid = now, 0

    def succeeded(self) -> None:
        if self.failures:
            n = self.failures
            self.logger.info("%s works again after %d failure%s over %.0f s",
                             self.what, n, "" if n == 1 else "s", self.clock() - self._first)
        self.failures = self._unsaid = 0
