"""`hqnlsd.reports.analysis`: the usage report's figures from hand-made records.

Every expected figure below is worked out by hand from the records in the test.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from hqnlsd.reports.analysis import Options, analyse, dedupe
from hqnlsd.reports.records import MalformedRecord, Record, parse_record
from tests.reports.records import T0, denial, denials, grant, release

KEY = "Test Publisher/Widget"


def parsed(*raw: dict[str, Any]) -> list[Record]:
    """The records as the reader gives them (through their JSON text)."""
    return [parse_record(json.dumps(record)) for record in raw]


def three_sessions() -> list[Record]:
    """h1 [0, 1800), h2 [600, 4200), h3 [1200, 5400): use 1, 2, 3, 2, 1, 0."""
    return parsed(
        grant(0, "h1", user="a"),
        grant(600, "h2", user="b"),
        grant(1200, "h3", user="c", host="other"),
        release(1800, "h1", held=1800, user="a"),
        release(4200, "h2", held=3600, user="b"),
        release(5400, "h3", held=4200, user="c", host="other"),
    )


def two_hours(**extra: Any) -> Options:
    """The two hours from `T0`."""
    return Options(since=T0, until=T0 + 7200, **extra)


def test_peak_and_average_overall_per_hour_and_per_day() -> None:
    """Peak 3 at T0+1200; average 9600/7200; hour 0 average 7200/3600 = 2 (peak 3),
    hour 1 average 2400/3600 (peak 2); the day (two hours of it observed) as overall."""
    usage = analyse(three_sessions(), two_hours()).products[KEY]
    assert usage.peak == 3
    assert usage.peak_at == T0 + 1200
    assert usage.average == pytest.approx(9600 / 7200)
    assert [(b.start, b.peak) for b in usage.hourly] == [(T0, 3), (T0 + 3600, 2)]
    assert [b.average for b in usage.hourly] == pytest.approx([2.0, 2400 / 3600])
    assert [(b.start, b.peak) for b in usage.daily] == [(T0, 3)]
    assert usage.daily[0].average == pytest.approx(9600 / 7200)


def test_the_series_steps_at_every_change() -> None:
    """The in-use series: the level after each change, from the start of the range."""
    usage = analyse(three_sessions(), two_hours()).products[KEY]
    assert usage.series == [
        (T0, 1),
        (T0 + 600, 2),
        (T0 + 1200, 3),
        (T0 + 1800, 2),
        (T0 + 4200, 1),
        (T0 + 5400, 0),
    ]


def test_units_open_sessions_and_releases_without_their_grant() -> None:
    """A 3-unit licence counts 3; a licence never released is in use to the end; a
    release whose grant was not read starts ``held_seconds`` before it."""
    records = parsed(
        grant(100, "big", units=3),
        release(3000, "old", held=2900),  # granted at 100, its grant rotated away
        release(3000, "big", held=2900, units=3),
        grant(3600, "open"),
        denial(7200),  # the last record: the data's end
    )
    usage = analyse(records, Options()).products[KEY]
    assert usage.peak == 4
    assert usage.series == [(T0 + 100, 4), (T0 + 3000, 0), (T0 + 3600, 1)]
    assert usage.average == pytest.approx((4 * 2900 + 3600) / 7100)


def test_permitted_count_is_carried() -> None:
    """The permit's count given for a product is on its usage (None when unknown)."""
    assert analyse(three_sessions(), two_hours(permitted={KEY: 5})).products[KEY].permitted == 5
    assert analyse(three_sessions(), two_hours()).products[KEY].permitted is None


def test_denials_counted_exactly_per_product_and_status() -> None:
    """Single denials and the counts of summary records add up, per product and status."""
    records = parsed(
        denial(10),
        denial(20, user="b"),
        denial(30, status="EXCLUDED"),
        denials(90, count=40),
        denial(40, product="Nope", status="BADPRODUCT"),
        denials(120, count=5, product=None),
    )
    analysis = analyse(records, Options())
    assert analysis.denials == {
        ("Test Publisher", "Widget", "NOLICENCES"): 42,
        ("Test Publisher", "Widget", "EXCLUDED"): 1,
        ("Test Publisher", "Nope", "BADPRODUCT"): 1,
        (None, None, "NOLICENCES"): 5,
    }
    assert analysis.totals[KEY].denials == 43
    assert analysis.total_denials == 49


def test_true_denials_are_refusals_not_followed_by_a_grant_in_time() -> None:
    """N = 10 minutes: amy got a licence 5 minutes later (not a true denial), bob 15
    minutes later and cat never (true denials), a grant of another product does not
    count, dan's window outlasts the data (undecided), a summary is not judged."""
    records = parsed(
        denial(100, user="amy"),
        grant(400, "a1", user="amy"),
        denial(200, user="bob"),
        grant(1100, "b1", user="bob"),
        denial(300, user="cat"),
        grant(310, "c1", user="cat", product="Other"),
        denials(320, count=7),
        denial(7000, user="dan"),
        release(7200, "a1", held=6800, user="amy"),
    )
    analysis = analyse(records, Options(true_denial_seconds=600))
    totals = analysis.totals[KEY]
    assert (totals.denials, totals.true, totals.undecided) == (11, 2, 1)
    assert sorted(d.user for d in analysis.true_denials) == ["bob", "cat"]
    # A longer window: bob's grant comes in time.
    longer = analyse(records, Options(true_denial_seconds=1000)).totals[KEY]
    assert (longer.true, longer.undecided) == (1, 1)


def test_session_length_distribution() -> None:
    """Lengths 30 s, 2 min, 30 min, 2 h and 30 h fall in their buckets; an open
    session has no length yet."""
    records = parsed(
        grant(0, "s1"),
        release(30, "s1", held=30),
        grant(0, "s2"),
        release(120, "s2", held=120),
        grant(0, "s3"),
        release(1800, "s3", held=1800),
        grant(0, "s4"),
        release(7200, "s4", held=7200),
        grant(0, "s5"),
        release(108_000, "s5", held=108_000),
        grant(0, "open"),
    )
    analysis = analyse(records, Options())
    counts = {bucket.label: bucket.count for bucket in analysis.session_lengths}
    assert counts == {
        "< 1 min": 1,
        "1-5 min": 1,
        "5-15 min": 0,
        "15-60 min": 1,
        "1-4 h": 1,
        "4-8 h": 0,
        "8-24 h": 0,
        ">= 24 h": 1,
    }
    assert sorted(s.seconds for s in analysis.sessions if s.seconds is not None) == [
        30,
        120,
        1800,
        7200,
        108_000,
    ]


def test_top_users_and_hosts() -> None:
    """Sessions and licence-hours per user and per host, most used first."""
    analysis = analyse(three_sessions(), two_hours())
    assert [(u.name, u.sessions, u.licence_seconds) for u in analysis.users] == [
        ("c", 1, 4200),
        ("b", 1, 3600),
        ("a", 1, 1800),
    ]
    assert [(h.name, h.sessions, h.licence_seconds) for h in analysis.hosts] == [
        ("box", 2, 5400),
        ("other", 1, 4200),
    ]


def test_licences_reclaimed_by_reason() -> None:
    """Revocations per product and reason; reclaims are the housekeeping reasons."""
    records = parsed(
        grant(0, "r1"),
        release(100, "r1", event="revoked", reason="crashout", held=100),
        grant(0, "r2"),
        release(100, "r2", event="revoked", reason="crashout", held=100),
        grant(0, "r3"),
        release(200, "r3", event="revoked", reason="killed", held=200),
        grant(0, "r4"),
        release(300, "r4", held=300),
    )
    analysis = analyse(records, Options())
    assert analysis.reclaimed == {
        ("Test Publisher", "Widget", "crashout"): 2,
        ("Test Publisher", "Widget", "killed"): 1,
    }
    assert analysis.totals[KEY].reclaimed == 2


def test_time_range_clips_sessions() -> None:
    """Only the range is reported; a licence held across its start is in use from it."""
    usage = analyse(three_sessions(), Options(since=T0 + 3600, until=T0 + 7200)).products[KEY]
    assert usage.series[0] == (T0 + 3600, 2)
    assert usage.peak == 2
    assert usage.average == pytest.approx(2400 / 3600)


def test_product_filter() -> None:
    """``--product`` names PUBLISHER/PRODUCT or a product name alone."""
    records = parsed(grant(0, "w"), grant(0, "g", product="Gadget"), denial(5, product="Gadget"))
    assert set(analyse(records, Options(products=("Widget",))).products) == {KEY}
    only = analyse(records, Options(products=("Test Publisher/Gadget",)))
    assert set(only.products) == {"Test Publisher/Gadget"}
    assert only.total_denials == 1


def test_dedupe_across_two_members() -> None:
    """The same transaction in two members' files counts once: a grant or an end by
    its handle, anything else when the whole record is the same."""
    member_a = parsed(grant(0, "h1"), denial(50), grant(60, "h2"))
    # The backup took over: it has a copy of what it read and its own records.
    member_b = parsed(
        grant(0, "h1"),
        denial(50),
        release(100, "h1", held=100),
        release(200, "h2", held=140),
        denial(50, user="zed"),
    )
    records, duplicates = dedupe(member_a + member_b)
    assert duplicates == 2
    analysis = analyse(records, Options())
    assert analysis.duplicates == 0
    assert len(analysis.sessions) == 2
    assert analysis.total_denials == 2
    assert analysis.products[KEY].peak == 2


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        '{"event": "grant"}',
        '{"at": "yesterday", "event": "denial"}',
        json.dumps({**grant(0, "x"), "indices": "1"}),
        json.dumps({**grant(0, "x"), "handle": 5}),
        json.dumps({**denials(0, count=3), "count": -1}),
        json.dumps({**grant(0, "x"), "at": float("nan")}),
        json.dumps({**grant(0, "x"), "at": True}),
    ],
)
def test_malformed_records_raise_one_error(text: str) -> None:
    """Anything that is not a well-formed record is a `MalformedRecord`."""
    with pytest.raises(MalformedRecord):
        parse_record(text)


def test_unknown_kinds_parse_to_none() -> None:
    """A record of a kind this reader does not know (a newer daemon) is not an error."""
    assert parse_record('{"ts": "x", "at": 1.0, "event": "future"}') is None


def test_redirects_are_not_denials() -> None:
    """A REQUEST sent to another server (TRY_SERVER, TRY_DOMAIN: a backup or another
    domain's server) is counted apart: the client is told where to ask, not refused."""
    records = parsed(
        denial(10, status="TRY_SERVER"),
        denial(11, status="TRY_DOMAIN", user="b"),
        denial(12),
    )
    analysis = analyse(records, Options(true_denial_seconds=1))
    assert analysis.denials == {("Test Publisher", "Widget", "NOLICENCES"): 1}
    assert analysis.redirects == {
        ("Test Publisher", "Widget", "TRY_SERVER"): 1,
        ("Test Publisher", "Widget", "TRY_DOMAIN"): 1,
    }
    totals = analysis.totals[KEY]
    assert (totals.denials, totals.redirects, totals.true) == (1, 2, 0)
    assert [(user.name, user.denials) for user in analysis.users] == [("amy", 1)]
