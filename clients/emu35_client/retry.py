"""Retries with exponential backoff, for calls that are safe to repeat.

Only UNAVAILABLE (a server or stage restarting) and RESOURCE_EXHAUSTED (a full queue) are
retried; the server's hint (``retry-after-ms`` trailing metadata) is honoured as a lower bound
on the wait. Health, Info and ListModels are idempotent; Generate is retried only when the
caller asks and only while no event has arrived (nothing was generated for it yet).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

from .errors import Emu35Error, InvalidArgument

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` extra attempts; waits ``base * 2**n`` seconds (up to ``cap``), with jitter,
    and never less than the server's hint."""

    retries: int = 0
    base: float = 0.2
    cap: float = 10.0

    def __post_init__(self):
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise InvalidArgument(f"retries: expected an int >= 0, got {self.retries!r}")

    def should_retry(self, error: Emu35Error, attempt: int) -> bool:
        """``attempt``: how many retries were made already."""
        return attempt < self.retries and error.code in RETRYABLE

    def delay(self, error: Emu35Error, attempt: int) -> float:
        backoff = min(self.cap, self.base * (2 ** attempt)) * random.uniform(0.5, 1.0)
        hint = error.retry_after_s or 0.0
        return min(max(backoff, hint), max(self.cap, hint))


def as_policy(retries: int | RetryPolicy | None) -> RetryPolicy:
    if isinstance(retries, RetryPolicy):
        return retries
    return RetryPolicy(0 if retries is None else retries)
