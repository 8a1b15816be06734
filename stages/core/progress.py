"""Progress lines with throughput and ETA for long work (training steps, users, rows).

One log line every ``every_s`` seconds: ``<name>: <count>/<total> <unit> (<pct>%) <rate> <unit>/s ETA <eta>``
(no total: no percentage and no ETA), then any ``key=value`` extras.
"""

from __future__ import annotations

import logging
import time


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Rate-limited progress logger. ``total`` may be None when unknown (no ETA then)."""

    def __init__(self, name: str, total: int | None, *, unit: str = "items", every_s: float = 10.0,
                 logger: logging.Logger | None = None) -> None:
        self.name, self.total, self.unit, self.every_s = name, total, unit, every_s
        self.log = logger or logging.getLogger("lum.progress")
        self.count = 0
        self.started = time.perf_counter()
        self._last = self.started

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        return self.count / max(self.elapsed, 1e-9)

    def update(self, n: int = 1, **extra: object) -> None:
        self.count += n
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            self.log.info(self.line(**extra))

    def line(self, **extra: object) -> str:
        parts = [f"{self.name}: {self.count:,}"]
        if self.total:
            parts[0] += f"/{self.total:,} {self.unit} ({100.0 * self.count / self.total:.1f}%)"
        else:
            parts[0] += f" {self.unit}"
        parts.append(f"{self.rate:,.1f} {self.unit}/s")
        if self.total and self.count:
            parts.append(f"ETA {_fmt_duration((self.total - self.count) / max(self.rate, 1e-9))}")
        parts += [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items()]
        return " ".join(parts)

    def done(self, **extra: object) -> float:
        """Log the final line; returns the elapsed seconds."""
        self.log.info(self.line(**extra) + f" done in {_fmt_duration(self.elapsed)}")
        return self.elapsed
