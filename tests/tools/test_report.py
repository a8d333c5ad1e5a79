"""``hqn_report`` on hand-made usage files: outputs, escaping, errors, options."""

from __future__ import annotations

import base64
import configparser
import csv
import io
import json
import re
from pathlib import Path

import pytest

from hqnlsd.permits.format import format_permit
from hqnlsd.permits.model import HostId
from hqnlsd.tools.report import main, parse_when
from tests.daemons import make_permit, product_permit
from tests.reports.records import T0, denial, denials, grant, lines, release

NASTY = '<script>alert("x")</script>&$\\x$'


def run(*argv: str) -> tuple[int, str, str]:
    """hqn_report's exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory with a small usage report, a hostile user name and a bad line."""
    directory = tmp_path / "state"
    directory.mkdir()
    (directory / "usage.jsonl").write_text(
        lines(
            grant(0, "h1", user=NASTY, host=NASTY),
            grant(600, "h2", product=NASTY),
            denial(700, user=NASTY, status=NASTY),
            release(1800, "h1", held=1800, user=NASTY),
            release(5000, "h2", held=4400, event="revoked", reason="crashout", product=NASTY),
            denials(6000, count=4),
        )
        + "{not json\n"
    )
    return directory


def test_writes_every_output_and_embeds_every_chart(state: Path, tmp_path: Path) -> None:
    """The page, the summary, CSV files and PNG charts; each PNG is in the page as a
    data: URI, the page loads nothing from elsewhere."""
    out = tmp_path / "out"
    status, _, stderr = run(str(state), "-o", str(out))
    assert status == 0, stderr
    assert "1 malformed line" in stderr and "usage.jsonl:7" in stderr
    page = (out / "report.html").read_text("utf-8")
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} >= {
        "in_use_1.png",
        "in_use_2.png",
        "hourly.png",
        "daily.png",
        "denials.png",
        "true_denials.png",
        "users.png",
        "hosts.png",
        "session_lengths.png",
        "revoked.png",
    }
    for png in pngs:
        assert png.read_bytes().startswith(b"\x89PNG")
        assert "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode() in page
    assert re.search(r"""(src|href)=["'](?!data:)""", page) is None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total_denials"] == 5
    assert summary["inputs"]["skipped"] == 1
    for name in (
        "products",
        "in_use",
        "hourly",
        "daily",
        "denials",
        "redirects",
        "true_denials",
        "users",
        "hosts",
        "sessions",
        "session_lengths",
        "revoked",
    ):
        assert (out / f"{name}.csv").is_file()


def test_network_text_is_escaped_in_the_page_and_csv(state: Path, tmp_path: Path) -> None:
    """A user, host, product or status that is HTML appears only escaped; a CSV cell
    that would be a spreadsheet formula is quoted."""
    out = tmp_path / "out"
    assert run(str(state), "-o", str(out))[0] == 0
    page = (out / "report.html").read_text("utf-8")
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;$\\\\x$" in page
    (state / "usage.jsonl").write_text(lines(grant(0, "f", user="=cmd|' /C calc'!A0")))
    assert run(str(state), "-o", str(out))[0] == 0
    rows = list(csv.DictReader((out / "users.csv").open()))
    assert rows[0]["user"] == "'=cmd|' /C calc'!A0"


def test_permit_counts_from_permits_and_the_command_line(state: Path, tmp_path: Path) -> None:
    """``--permits`` reads each product's count; ``--permitted`` overrides it."""
    permits = tmp_path / "permits"
    permits.mkdir()
    permit = make_permit(
        [HostId(__import__("ipaddress").IPv4Address("127.0.0.1"), 1)],
        [product_permit("Widget", floating_count=7, node_count=2)],
    )
    (permits / "site-hqn.permit").write_text(format_permit(permit))
    out = tmp_path / "out"
    assert run(str(state), "-o", str(out), "--permits", str(permits))[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["products"]["Test Publisher/Widget"]["permitted"] == 9
    assert (
        run(
            str(state),
            "-o",
            str(out),
            "--permits",
            str(permits),
            "--permitted",
            "Test Publisher/Widget=4",
        )[0]
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["products"]["Test Publisher/Widget"]["permitted"] == 4


def test_range_and_product_options(state: Path, tmp_path: Path) -> None:
    """``--since``/``--until`` bound the report, ``--product`` picks products."""
    out = tmp_path / "out"
    since = "2026-01-05T00:20:00Z"
    assert (
        run(
            str(state),
            "-o",
            str(out),
            "--since",
            since,
            "--until",
            str(T0 + 3600),
            "--product",
            "Widget",
            "--true-denial-minutes",
            "1.5",
        )[0]
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["products"]) == ["Test Publisher/Widget"]
    assert summary["start"] == "2026-01-05T00:20:00Z"
    assert summary["end"] == "2026-01-05T01:00:00Z"
    assert summary["true_denial_minutes"] == 1.5
    assert summary["products"]["Test Publisher/Widget"]["peak"] == 1


def test_missing_and_unreadable_sources_are_clear_errors(tmp_path: Path) -> None:
    """Exit status 1 and one line naming the path; nothing written."""
    status, _, err = run(str(tmp_path / "nowhere"), "-o", str(tmp_path / "out"))
    assert status == 1
    assert err == f"hqn_report: error: {tmp_path / 'nowhere'}: no such file or directory\n"
    (tmp_path / "usage.jsonl").mkdir()
    status, _, err = run(str(tmp_path / "usage.jsonl"), "-o", str(tmp_path / "out"))
    assert status == 1 and "usage.jsonl" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bad_options_are_usage_errors(state: Path) -> None:
    """A time, a count or a minutes value that does not parse: exit status 2."""
    assert run(str(state), "--since", "last tuesday")[0] == 2
    assert run(str(state), "--permitted", "Widget")[0] == 2
    assert run(str(state), "--true-denial-minutes", "-1")[0] == 2
    status, _, err = run(str(state), "--since", "2026-02-01", "--until", "2026-01-01")
    assert status == 1 and "--until is before --since" in err


def test_parse_when() -> None:
    """Dates are UTC midnight; naive times UTC; offsets honoured; epoch seconds as is."""
    assert parse_when("2026-01-05") == T0
    assert parse_when("2026-01-05T01:00") == T0 + 3600
    assert parse_when("2026-01-05T02:00+01:00") == T0 + 3600
    assert parse_when(str(T0)) == T0


def test_console_script_is_declared() -> None:
    """``pip install .`` installs ``hqn_report``, and the package that draws charts."""
    parser = configparser.ConfigParser()
    parser.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    scripts = parser["options.entry_points"]["console_scripts"]
    assert "hqn_report = hqnlsd.tools.report:main" in scripts
    assert "matplotlib" in parser["options"]["install_requires"]


@pytest.mark.parametrize(
    "text",
    [
        "\x00\x1b[31m",
        "\u202eevil",
        "😀 中文 ä",
        "$\\frac{a}{b}$",
        "^_{}",
        "a" * 500,
        "\n\r\t",
        "%s {} \\",
        "\U000e0001",
        "",
    ],
)
def test_any_text_from_the_network_is_drawn_and_escaped(tmp_path: Path, text: str) -> None:
    """Controls, bidi overrides, other scripts, TeX, huge names: the report is
    written, every chart drawn, and the page holds no control character."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "usage.jsonl").write_text(
        lines(
            grant(0, "h1", user=text, host=text, product=text),
            denial(5, user=text, host=text, product=text, status=text),
            release(60, "h1", held=60, user=text, product=text, event="revoked", reason=text),
        ),
        "utf-8",
    )
    out = tmp_path / "out"
    status, _, err = run(str(state), "-o", str(out))
    assert status == 0, err
    page = (out / "report.html").read_text("utf-8")
    assert "<script" not in page and "\x00" not in page and "\x1b" not in page
    assert len(list(out.glob("*.png"))) == 9  # one product: one in-use chart, eight others


def test_a_gap_in_the_rotated_files_is_said(state: Path, tmp_path: Path) -> None:
    """A rotated file missing between two that are there (``.2`` of ``.1`` and ``.3``):
    its records are not in the report, so stderr and summary.json name it."""
    live = state / "usage.jsonl"
    (state / "usage.jsonl.1").write_bytes(live.read_bytes())
    (state / "usage.jsonl.3").write_bytes(live.read_bytes())
    status, _, err = run(str(state), "-o", str(tmp_path / "out"))
    assert status == 0
    missing = str(state / "usage.jsonl.2")
    assert (
        f"hqn_report: warning: rotated file(s) missing, their records are not counted: {missing}\n"
        in err
    )
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["inputs"]["rotation_gaps"] == [missing]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Rotated files missing" in page and missing in page
