"""``hqnls``: licences for scripts, on the blocking client library.

Commands::

    hqnls run --publisher P --product X --version V [--units N] -- COMMAND [ARG...]
        hold a licence while COMMAND runs (UPDATE in the background, RELEASE when
        it ends); exit with COMMAND's status. COMMAND sees HQNLS_HANDLE.
    hqnls request --publisher P --product X --version V [--hold] [--json]
        take a licence and print its handle; released when hqnls exits, unless
        --hold leaves it held (until 'hqnls release HANDLE' or its crashout time)
    hqnls release HANDLE
    hqnls users --publisher P --product X --version V [--json]
    hqnls status [--json]            PING every server of the search list

Every command takes ``--server HOST[:PORT]`` (repeatable; else ``HQNSERVERS``,
else the local host and hqnserver1, 2, ...), ``--port``, ``--hosts FILE``,
``--timeout SECONDS`` and ``--trust PUB`` (a publisher ``.pub`` file or a
directory of them: only servers proving a publisher-certified key are accepted).

Exit status: 0 success (``run``: the command's status), 69 (EX_UNAVAILABLE) no
licence could be had / no server answered, 1 other failure, 2 usage, 126/127
COMMAND could not be run, 128+N COMMAND killed by signal N.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, TextIO

from hqnlsd.client.blocking import BlockingLicence, BlockingLicenceClient
from hqnlsd.client.errors import ClientError, LicenceDenied, NoServer
from hqnlsd.identity import DEFAULT_HOSTS_PATH
from hqnlsd.protocols import DEFAULT_CLIENT_PORT
from hqnlsd.protocols.replies import format_reply_text

PROG = "hqnls"
EX_UNAVAILABLE = 69
#: The variable that tells the command run by ``hqnls run`` its licence handle.
HANDLE_VARIABLE = "HQNLS_HANDLE"
_FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class UsageError(Exception):
    """Bad arguments (exit status 2)."""


def _client(args: argparse.Namespace) -> BlockingLicenceClient:
    try:
        return BlockingLicenceClient(
            servers=args.server or None,
            port=args.port,
            hosts_file=args.hosts,
            trusted=args.trust,
            timeout=args.timeout,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def _product_name(args: argparse.Namespace) -> str:
    return f"{args.publisher} {args.product} {args.version}"


def _warn(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def _take(client: BlockingLicenceClient, args: argparse.Namespace) -> BlockingLicence:
    return client.request(
        args.publisher,
        args.product,
        args.version,
        units=args.units,
        on_lost=lambda licence, reason: _warn(
            f"licence for {_product_name(args)} lost ({reason}); requesting it again"
        ),
        on_regained=lambda licence: _warn(
            f"licence for {_product_name(args)} regained (handle {licence.handle})"
        ),
    )


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    """Hold a licence while a command runs."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("run needs a command after --: hqnls run ... -- COMMAND [ARG...]")
    client = _client(args)
    licence = _take(client, args)
    try:
        env = dict(os.environ)
        env[HANDLE_VARIABLE] = licence.handle
        try:
            child = subprocess.Popen(command, env=env)
        except FileNotFoundError:
            _warn(f"{command[0]}: command not found")
            return 127
        except OSError as e:
            _warn(f"{command[0]}: cannot run: {e.strerror or e}")
            return 126
        previous = _forward_signals(child)
        try:
            status = child.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    finally:
        licence.release()
    return 128 - status if status < 0 else status


def _forward_signals(child: subprocess.Popen[bytes]) -> dict[int, Any]:
    """Pass SIGINT, SIGTERM, SIGHUP on to the child; hqnls waits for it to end."""

    def forward(signum: int, frame: FrameType | None) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous: dict[int, Any] = {}
    for signum in _FORWARDED_SIGNALS:
        previous[signum] = signal.signal(signum, forward)
    return previous


def cmd_request(args: argparse.Namespace, out: TextIO) -> int:
    """Take a licence and print its handle."""
    client = _client(args)
    licence = _take(client, args)
    if args.json:
        record = {"server": str(licence.server), **licence.grant}
        print(json.dumps(record, sort_keys=True), file=out)
    else:
        print(licence.handle, file=out)
    out.flush()
    if args.hold:
        licence.detach()
    else:
        licence.release()
    return 0


def cmd_release(args: argparse.Namespace, out: TextIO) -> int:
    """Release a licence by handle."""
    reply = _client(args).release_handle(args.handle)
    print(f"released {reply.get('handle') or args.handle}", file=out)
    return 0


def cmd_users(args: argparse.Namespace, out: TextIO) -> int:
    """List the holders of a product."""
    users = _client(args).users(args.publisher, args.product, args.version)
    if args.json:
        print(json.dumps(users), file=out)
        return 0
    if not users:
        print(f"no licences of {_product_name(args)} are held", file=out)
        return 0
    columns: list[str] = []
    for record in users:
        columns.extend(key for key in record if key not in columns)
    rows = [[key.upper() for key in columns]]
    rows.extend([record.get(key, "") for key in columns] for record in users)
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip(), file=out)
    return 0


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    """PING every server of the search list."""
    client = _client(args)
    results = client.ping()
    answered = 0
    records = []
    for result in results:
        if result.reply is not None:
            answered += 1
            said = format_reply_text(result.reply)[0]
            records.append({"server": str(result.server), "answer": said,
                            "ms": round(result.seconds * 1000, 1)})
        else:
            records.append({"server": str(result.server), "problem": result.problem})
    if args.json:
        print(json.dumps(records), file=out)
    else:
        for record in records:
            if "answer" in record:
                print(f"{record['server']:<24} {record['answer']}  ({record['ms']} ms)", file=out)
            else:
                print(f"{record['server']:<24} unreachable: {record['problem']}", file=out)
    return 0 if answered else EX_UNAVAILABLE


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of hqnls."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", action="append", metavar="HOST[:PORT]",
                        help="a licence server to ask (repeatable; default: HQNSERVERS, "
                        "else the local host, then hqnserver1, 2, ...)")
    common.add_argument("--port", type=int, default=DEFAULT_CLIENT_PORT,
                        help=f"port of servers named without one (default {DEFAULT_CLIENT_PORT})")
    common.add_argument("--hosts", default=str(DEFAULT_HOSTS_PATH), metavar="FILE",
                        help="hosts file with the hqnserverN aliases")
    common.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="bound of every connect and reply (default 10)")
    common.add_argument("--trust", metavar="PUB",
                        help="publisher .pub file (or directory of them): accept only "
                        "servers that prove a key certified by it")

    product = argparse.ArgumentParser(add_help=False)
    product.add_argument("--publisher", required=True)
    product.add_argument("--product", required=True)
    product.add_argument("--version", required=True)

    parser = argparse.ArgumentParser(
        prog=PROG, description="Take, hold and release hqnlsd licences from scripts."
    )
    commands = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)

    run = commands.add_parser("run", parents=[common, product],
                              help="hold a licence while a command runs")
    run.add_argument("--units", type=int, default=1)
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")
    run.set_defaults(run=cmd_run)

    request = commands.add_parser("request", parents=[common, product],
                                  help="take a licence and print its handle")
    request.add_argument("--units", type=int, default=1)
    request.add_argument("--hold", action="store_true",
                         help="leave the licence held after hqnls exits")
    request.add_argument("--json", action="store_true", help="print the whole grant as JSON")
    request.set_defaults(run=cmd_request)

    release = commands.add_parser("release", parents=[common], help="release a licence")
    release.add_argument("handle", metavar="HANDLE")
    release.set_defaults(run=cmd_release)

    users = commands.add_parser("users", parents=[common, product],
                                help="list the holders of a product")
    users.add_argument("--json", action="store_true")
    users.set_defaults(run=cmd_users)

    status = commands.add_parser("status", parents=[common], help="PING the servers")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run hqnls with ``argv`` (default: the command line); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    run: Callable[[argparse.Namespace, TextIO], int] = args.run
    try:
        return run(args, out or sys.stdout)
    except UsageError as e:
        _warn(f"error: {e}")
        return 2
    except NoServer as e:
        _warn(str(e))
        return EX_UNAVAILABLE
    except LicenceDenied as e:
        if args.run in (cmd_run, cmd_request):
            _warn(f"no licence for {_product_name(args)}: {e}")
            return EX_UNAVAILABLE
        _warn(str(e))
        return 1
    except (ClientError, TimeoutError) as e:
        _warn(f"error: {e}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

