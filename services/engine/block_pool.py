"""Paged KV-cache bookkeeping: fixed-size blocks, reference counts, and prefix caching.

A full block's identity is the hash of its tokens chained with the previous block's hash, so
two sequences that start with the same tokens (the shared negative prompt, a repeated
reference image) share the same physical blocks. Freed blocks keep their hash until reused,
so a later request can still hit them (an LRU cache of free, still-valid blocks).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence


def block_hash(prev: bytes | None, tokens: Sequence[int]) -> bytes:
    h = hashlib.blake2b(prev or b"", digest_size=16)
    h.update(b"".join(t.to_bytes(4, "little") for t in tokens))
    return h.digest()


class OutOfBlocks(RuntimeError):
    """No free block is left; the scheduler preempts or waits."""


class BlockPool:
    """Owns block ids 0..num_blocks-1. Not thread-safe: the scheduler thread owns it."""

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref = [0] * num_blocks
        self.hash_of: list[bytes | None] = [None] * num_blocks
        self.by_hash: dict[bytes, int] = {}
        # free blocks, oldest-freed first; cached (hashed) ones are reused last-resort LRU
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    def allocate(self) -> int:
        if not self.free:
            raise OutOfBlocks("KV cache is full")
        block, _ = self.free.popitem(last=False)
        old = self.hash_of[block]
        if old is not None:  # evict the cached content this block held
            if self.by_hash.get(old) == block:
                del self.by_hash[old]
            self.hash_of[block] = None
        self.ref[block] = 1
        return block

    def lookup(self, h: bytes) -> int | None:
        """A block holding exactly this content, taken (ref +1), or None."""
        block = self.by_hash.get(h)
        if block is None:
            return None
        if self.ref[block] == 0:
            del self.free[block]
        self.ref[block] += 1
        return block

    def publish(self, block: int, h: bytes) -> None:
        """Record that a (full, computed) block holds the content hashed as h."""
        if self.hash_of[block] is None and h not in self.by_hash:
            self.hash_of[block] = h
            self.by_hash[h] = block

    def release(self, blocks: Sequence[int]) -> None:
        for block in blocks:
            if self.ref[block] <= 0:
                raise RuntimeError(f"block {block} released more often than taken")
            self.ref[block] -= 1
            if self.ref[block] == 0:
                self.free[block] = None
                if self.hash_of[block] is None:  # uncached blocks are reused first
                    self.free.move_to_end(block, last=False)

    def forget_cached(self) -> None:
        """Drop every content hash (after a failed step, when published blocks may not hold
        what their hash says); blocks in use stay in use, just no longer shareable."""
        self.by_hash.clear()
        self.hash_of = [None] * self.num_blocks

    def check(self) -> None:
        """Invariant check for tests: every block is either free (ref 0) or referenced."""
        for b in range(self.num_blocks):
            assert (self.ref[b] == 0) == (b in self.free), f"block {b}: ref {self.ref[b]}"
        for h, b in self.by_hash.items():
            assert self.hash_of[b] == h
