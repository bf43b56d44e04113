"""Per-replica caches: responses bounded by bytes (LRU) and manifest rows bounded by age.

Only verified results go in (a small file whose sha256 matched, an image rehydrated from one), so a
refusal is never cached and a later request is checked again."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any


class ByteLRU:
    """Least-recently-used cache of byte payloads whose sizes add up to at most `max_bytes`."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, tuple[bytes, dict]] = OrderedDict()
        self._lock = threading.Lock()  # route handlers run in a thread pool
        self.bytes = self.hits = self.misses = self.evictions = 0

    def get(self, key) -> tuple[bytes, dict] | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key, data: bytes, meta: dict) -> None:
        if len(data) > self.max_bytes:  # larger than the whole budget (or caching is off): never stored
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= len(old[0])
            self._items[key] = (data, meta)
            self.bytes += len(data)
            while self.bytes > self.max_bytes:
                _, (evicted, _) = self._items.popitem(last=False)
                self.bytes -= len(evicted)
                self.evictions += 1

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._items), "bytes": self.bytes, "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses, "evictions": self.evictions}


class TTLCache:
    """A bounded map whose entries expire after `ttl_s`: manifest rows and listings change when a
    compress run lands, so a replica reads them again after a while instead of forever."""

    def __init__(self, ttl_s: float, max_entries: int = 100_000):
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._items: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            item = self._items.get(key)
            if item is None or time.monotonic() - item[0] > self.ttl_s:
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = (time.monotonic(), value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
