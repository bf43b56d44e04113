"""How a job reports progress: (done, total) now and then, then the end. The CLI shows a tqdm bar,
the Prefect flow a progress artifact; a plain call reports nowhere."""

from __future__ import annotations

import time
from typing import Protocol


class Progress(Protocol):
    def update(self, done: int, total: int) -> None: ...

    def close(self, done: int) -> None: ...


class NoProgress:
    def update(self, done: int, total: int) -> None:
        pass

    def close(self, done: int) -> None:
        pass


class TqdmProgress:
    """A bar on stderr; the total is an estimate that grows with the listing."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None  # made at the first update: planning logs come first

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="img", initial=done)
        self.bar.total, self.bar.n = total, done
        self.bar.refresh()

    def close(self, done: int) -> None:
        if self.bar is not None:
            self.bar.total, self.bar.n = done, done
            self.bar.close()


class Both:
    """Report to two places (the flow's artifact and the CLI's bar)."""

    def __init__(self, first: Progress, second: Progress):
        self.parts = (first, second)

    def update(self, done: int, total: int) -> None:
        for p in self.parts:
            p.update(done, total)

    def close(self, done: int) -> None:
        for p in self.parts:
            p.close(done)


class Throttled:
    """Passes at most one update every `every` seconds to `progress` (updates come per row)."""

    def __init__(self, progress: Progress, every: float = 2.0):
        self.progress, self.every, self.last = progress, every, 0.0

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last > self.every:
            self.progress.update(done, total)
            self.last = now

    def close(self, done: int) -> None:
        self.progress.close(done)
