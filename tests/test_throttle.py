"""The token bucket behind upload.max_mbps: exact rate on a fake clock, global across threads, and
one real-time measurement."""

from __future__ import annotations

import random
import threading
import time

import pytest

from daemon.upload.throttle import BYTES_PER_S_PER_MBPS, TokenBucket


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_unlimited_returns_at_once():
    """A rate of None or 0 never waits, whatever the size."""
    fake = FakeTime()
    for rate in (None, 0):
        bucket = TokenBucket(rate, clock=fake.clock, sleep=fake.sleep)
        assert not bucket.limited
        for _ in range(100):
            assert bucket.consume(10**12)
    assert fake.sleeps == []


def test_mbps_is_decimal_megabits():
    """from_mbps(1) is 125,000 bytes per second; from_mbps(None) is unlimited."""
    assert BYTES_PER_S_PER_MBPS == 125_000
    assert TokenBucket.from_mbps(100).rate_bytes_per_s == 12_500_000
    assert not TokenBucket.from_mbps(None).limited
    assert not TokenBucket.from_mbps(0).limited


def test_rejects_negative_rate_and_burst():
    """A negative rate or a non-positive burst is a programming error."""
    with pytest.raises(ValueError):
        TokenBucket(-1)
    with pytest.raises(ValueError):
        TokenBucket(1000, burst_bytes=0)


def test_rate_holds_within_2_percent_over_many_calls():
    """Thousands of random-sized chunks go through at the configured rate, within 2%."""
    fake = FakeTime()
    rate = 10 * BYTES_PER_S_PER_MBPS
    bucket = TokenBucket(rate, clock=fake.clock, sleep=fake.sleep)
    rng = random.Random(5)
    start, sent = fake.now, 0
    for _ in range(5000):
        n = rng.randint(1, 256 * 1024)
        bucket.consume(n)
        sent += n
    elapsed = fake.now - start
    assert sent / elapsed == pytest.approx(rate, rel=0.02)


def test_200_mb_upload_in_blocks_holds_the_cap():
    """200 MB sent in 4 MiB blocks at 100 Mbps takes 16 s of (fake) time, within 10%."""
    fake = FakeTime()
    bucket = TokenBucket.from_mbps(100, clock=fake.clock, sleep=fake.sleep)
    total, block, sent = 200_000_000, 4 << 20, 0
    start = fake.now
    while sent < total:
        n = min(block, total - sent)
        bucket.consume(n)
        sent += n
    assert fake.now - start == pytest.approx(16.0, rel=0.10)


def test_chunk_larger_than_burst_waits_proportionally():
    """One consume() far above the burst waits n / rate seconds."""
    fake = FakeTime()
    bucket = TokenBucket(1000, burst_bytes=10, clock=fake.clock, sleep=fake.sleep)
    bucket.consume(5000)
    assert fake.sleeps == [pytest.approx(5.0)]


def test_idle_time_earns_at_most_one_burst():
    """After a long pause the bucket refills to the burst and no further."""
    fake = FakeTime()
    bucket = TokenBucket(1000, burst_bytes=500, clock=fake.clock, sleep=fake.sleep)
    fake.now += 3600  # an hour with nothing to send
    assert bucket.reserve(500) == 0.0
    assert bucket.reserve(1000) == pytest.approx(1.0)


def test_the_cap_is_shared_between_threads():
    """Eight threads reserving at once queue behind one global debt, not eight separate ones."""
    fake = FakeTime()  # time stands still: every wait is measured from the same instant
    rate, chunk, per_thread, threads = 1_000_000, 50_000, 40, 8
    bucket = TokenBucket(rate, burst_bytes=chunk, clock=fake.clock, sleep=lambda s: None)
    waits: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker() -> None:
        barrier.wait()
        for _ in range(per_thread):
            w = bucket.reserve(chunk)
            with lock:
                waits.append(w)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(10)
    total = chunk * per_thread * threads
    # The last of all reservations waits for every byte anyone reserved before it.
    assert max(waits) == pytest.approx(total / rate, rel=0.02)
    # Every reservation's wait is distinct: callers are served one after another.
    assert len({round(w, 9) for w in waits}) == len(waits)


def test_cancel_ends_a_long_wait():
    """consume(cancel=event) returns False as soon as the event is set."""
    bucket = TokenBucket(1000)
    cancel = threading.Event()
    threading.Timer(0.05, cancel.set).start()
    start = time.monotonic()
    assert bucket.consume(1_000_000, cancel=cancel) is False  # would be ~1000 s
    assert time.monotonic() - start < 5


def test_real_time_20_mb_at_80_mbps_takes_2_seconds():
    """Pushing 20 MB in 1 MiB chunks through an 80 Mbps bucket takes 2.0 s ± 10% of wall time."""
    bucket = TokenBucket.from_mbps(80)
    total, chunk = 20_000_000, 1024 * 1024
    start = time.monotonic()
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        bucket.consume(n)
        sent += n
    elapsed = time.monotonic() - start
    assert elapsed == pytest.approx(2.0, rel=0.10)
