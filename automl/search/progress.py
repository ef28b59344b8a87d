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


def proxy_ranking_warning(accuracies: list[float], num_classes: int, dense_accuracy: float | None,
                          proxy_finetune_steps: int, *, fraction: float = 0.25) -> str | None:
    """A warning when every candidate's proxy accuracy sits near chance, else None.

    Why: the search ranks candidates by proxy accuracy, and the fine-tune only sees the top few. Under an
    aggressive budget, BN recalibration alone leaves most compressed models near chance, so the top few are
    picked by noise (the quickstart with the random agent: best proxy 15.6% for a 89.7% dense model; its
    best fine-tuned policy ended 9 points under dense). "Near" means below chance plus `fraction` of the
    dense model's margin over chance.
    """
    if not accuracies or num_classes < 2:
        return None
    chance = 1.0 / num_classes
    dense = dense_accuracy if dense_accuracy is not None and dense_accuracy > chance else 1.0
    best = max(accuracies)
    if best >= chance + fraction * (dense - chance):
        return None
    head = (f"warning: the best proxy accuracy is {100 * best:.2f}% (chance {100 * chance:.2f}%, dense "
            f"{100 * dense:.2f}%), so the proxy ranking that picked the candidates to fine-tune is mostly noise")
    if proxy_finetune_steps == 0:
        return (f"{head}; set evaluation.proxy_finetune_steps (20-50) to score each candidate after a few SGD "
                "steps, or loosen the budget")
    return f"{head} even after {proxy_finetune_steps} proxy SGD steps; raise evaluation.proxy_finetune_steps " \
           "or loosen the budget"
