"""Progress at a steady rhythm for long steps: counts done and remaining, throughput and ETA,
logged at most every `every` seconds (and once at the end), whatever the unit of work."""

from __future__ import annotations

import logging
import time


class Progress:
    def __init__(
        self,
        log: logging.Logger,
        what: str,
        total: int,
        unit: str = "rows",
        every: float = 10.0,
        log_at_end: bool = True,
    ) -> None:
        self.log, self.what, self.total, self.unit, self.every = log, what, max(int(total), 0), unit, every
        self.log_at_end = log_at_end
        self.done = 0
        self.started = self._last = time.monotonic()

    def advance(self, count: int = 1, force: bool = False) -> None:
        self.done += count
        now = time.monotonic()
        finished = self.log_at_end and self.done >= self.total
        if force or finished or now - self._last >= self.every:
            self._last = now
            self.log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        rate = self.done / elapsed
        remaining = max(self.total - self.done, 0)
        eta = f"{remaining / rate:.0f}s" if rate > 0 else "unknown"
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        return (
            f"{self.what}: {self.done:,}/{self.total:,} {self.unit}{share}, {remaining:,} to go, "
            f"{rate:,.0f} {self.unit}/s, ETA {eta}"
        )
