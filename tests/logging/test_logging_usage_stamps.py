"""The usage report's ``ts`` made once per second (`StampCache`) is, for every time,
the text ``datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")``
gave before, byte for byte."""

from __future__ import annotations

import datetime
import math
import random

from hqnlsd.logging.usage import StampCache, iso_stamp


def old_stamp(when: float) -> str:
    """What every record's ``ts`` was before the cache."""
    return datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="milliseconds")


def edge_times() -> list[float]:
    """Times whose microseconds round half to even, up into the next millisecond or
    second, and their neighbours one ulp away."""
    out: list[float] = []
    for second in (0.0, 1.0, 1_764_763_612.0, 1_764_763_613.0, 4_102_444_799.0):
        for fraction in (
            0.0,
            0.0005,
            0.0015,
            0.0019995,
            0.0020005,
            0.4999995,
            0.5,
            0.5000005,
            0.9994995,
            0.9995,
            0.9999994,
            0.9999995,
            0.9999996,
            0.99999999,
        ):
            when = second + fraction
            out += [when, math.nextafter(when, 0.0), math.nextafter(when, math.inf)]
    return out


def test_stamps_equal_the_old_text_on_edges_and_random_times() -> None:
    rng = random.Random(14)
    times = edge_times()
    times += [rng.uniform(0, 4_102_444_800) for _ in range(20_000)]
    # Runs of times within one second, as a batch of records has them.
    base = 1_764_763_612.0
    times += [base + k * 0.000_137 for k in range(20_000)]
    times += [base + rng.random() * 3 for _ in range(20_000)]
    cache = StampCache()
    for when in times:
        assert cache(when) == old_stamp(when), repr(when)
        assert iso_stamp(when) == old_stamp(when)


def test_other_times_go_to_datetime_itself() -> None:
    """Integers and out-of-range times: as datetime says (or fails)."""
    cache = StampCache()
    assert cache(1_764_763_612) == old_stamp(1_764_763_612)
    assert cache(-1.25) == old_stamp(-1.25)
    for bad in (1e20, 253_402_300_800.5):
        try:
            expected: object = old_stamp(bad)
        except (ValueError, OverflowError, OSError) as error:
            expected = type(error)
        try:
            got: object = cache(bad)
        except (ValueError, OverflowError, OSError) as error:
            got = type(error)
        assert got == expected
