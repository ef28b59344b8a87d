"""Live progress of a search: candidates done, best so far, ETA."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class SearchProgress:
    """Prints one line per finished candidate; the ETA uses the mean time per candidate so far."""

    def __init__(self, total: int, already: int = 0, printer: Callable[[str], None] = print,
                 best: dict[str, Any] | None = None):
        self.total, self.done, self.new = total, already, 0
        self.print = printer
        self.best = best
        self.failed = 0
        self.t0 = time.monotonic()

    def update(self, record: dict[str, Any]) -> None:
        self.done += 1
        self.new += 1
        m = record["metrics"]
        if record["status"] != "ok":
            self.failed += 1
            what = f"FAILED ({(record.get('error') or '').splitlines()[0][:80]})"
        else:
            what = f"acc {100 * m.get('accuracy', 0):.2f}%" + _cost(m)
            if self.best is None or m.get("accuracy", 0) > self.best["metrics"].get("accuracy", 0):
                self.best = record
        elapsed = time.monotonic() - self.t0
        eta = elapsed / self.new * (self.total - self.done)
        best = ""
        if self.best is not None:
            bm = self.best["metrics"]
            best = f" | best #{self.best['index']}: {100 * bm.get('accuracy', 0):.2f}%" + _cost(bm)
        self.print(f"[{self.done}/{self.total}] #{record['index']} {what}{best} | ETA {_fmt(eta)}")


def _cost(m: dict[str, Any]) -> str:
    if "latency_ms" in m:
        return f" @ {m['latency_ms']:.3f} ms"
    if "mac_ratio" in m:
        return f" @ {100 * m['mac_ratio']:.0f}% MACs"
    return ""


def _fmt(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"
