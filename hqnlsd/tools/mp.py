"""``hqn_mp``: the publisher's tool. Makes keys, seals and checks permits.

Commands::

    hqn_mp keygen PREFIX                          PREFIX.key (0600) + PREFIX.pub
    hqn_mp sign --key PREFIX.key FORM [-o OUT]    seal a permit form
    hqn_mp check --keys DIR PERMIT                verify a sealed permit
    hqn_mp hostid                                 this machine's unique id
    hqn_mp demo [DIR]                             seal DIR/demo.form for this machine
    hqn_mp servercert --key PREFIX.key PERMIT -o OUT
                                                  server key for the permit's domain:
                                                  OUT.serverkey (0600) + OUT.servercert

Exit status: 0 success, 1 failure (with a message, never a traceback), 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from hqnlsd.identity import format_unique_id, local_unique_id
from hqnlsd.permits.errors import PermitError
from hqnlsd.permits.format import format_date, parse_form
from hqnlsd.permits.model import HostId, Permit, ProductPermit
from hqnlsd.permits.policy import describe
from hqnlsd.permits.reader import (
    PermitFile,
    decode_permit_bytes,
    read_permit_file,
    read_permit_text,
)
from hqnlsd.permits.seal import (
    KeyFileError,
    PublisherKey,
    TrustedKeys,
    seal_text,
    sign_permit,
    write_key_files,
)

PROG = "hqn_mp"
DEMO_FORM = "demo.form"
DEMO_KEY = "demo-publisher.key"
DEMO_PUB = "demo-publisher.pub"
DEMO_PERMIT = "demo-hqn.permit"


class ToolError(Exception):
    """A failure to report in one line (exit status 1)."""


def _read_text(path: Path, what: str) -> str:
    """The UTF-8 text of a form (a publisher's own file: it must be clean text)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ToolError(f"{path}: cannot read the {what}: {e.strerror or e}") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ToolError(f"{path}:{line}: the {what} is not UTF-8 text") from None
    return decode_permit_bytes(data)


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader never sees half a permit)."""
    directory = path.parent
    try:
        fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise ToolError(f"{path}: cannot write: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as out:
            out.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except OSError as e:
        Path(temp).unlink(missing_ok=True)
        raise ToolError(f"{path}: cannot write: {e.strerror or e}") from None


def _self_check(text: str, key: PublisherKey, name: str) -> None:
    """Read a freshly sealed permit back with the key's public half."""
    result = read_permit_text(text, path=name, trusted=TrustedKeys.of(key.public_key))
    if result.error is not None:  # would be a bug in hqnlsd, not in the input
        raise ToolError(f"the sealed permit does not verify: {result.error}")


# -- commands ------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace, out: TextIO) -> int:
    """Make a publisher key pair."""
    try:
        key_path, pub_path = write_key_files(args.prefix)
    except KeyFileError as e:
        raise ToolError(str(e)) from None
    key = PublisherKey.load(key_path)
    print(f"wrote {key_path} (private, mode 0600: keep it secret, it seals permits)", file=out)
    print(f"wrote {pub_path} (public: sites install it to trust your permits)", file=out)
    print(f"key id {key.key_id}", file=out)
    return 0


def _load_key(path: Path) -> PublisherKey:
    try:
        return PublisherKey.load(path)
    except KeyFileError as e:
        raise ToolError(str(e)) from None


def cmd_sign(args: argparse.Namespace, out: TextIO) -> int:
    """Seal a permit form (keeping its comments and layout)."""
    key = _load_key(Path(args.key))
    form_path = Path(args.form)
    text = _read_text(form_path, "permit form")
    try:
        sealed = seal_text(text, key, path=str(form_path))
    except PermitError as e:
        raise ToolError(str(e)) from None
    _self_check(sealed, key, str(form_path))
    if args.output is None:
        out.write(sealed)
    else:
        _write_text(Path(args.output), sealed)
        print(f"wrote {args.output} (sealed with key {key.key_id})", file=sys.stderr)
    return 0


def _host_list(hosts: Sequence[HostId]) -> str:
    return ", ".join(str(host) for host in hosts) or "none"


def _describe_product(index: int, product: ProductPermit) -> str:
    return (
        f"product {index}: {product.publisher} / {product.product} / {product.version}: "
        f"policy 0x{product.policy:x} ({describe(product.policy)}), "
        f"{product.node_count} node-locked + {product.floating_count} floating, "
        f"{format_date(product.start)} to {format_date(product.expiry)}, "
        f"update every {product.update_minutes} min, "
        f"data [{' '.join(str(v) for v in product.data)}], "
        f"locked nodes: {_host_list(product.locked_nodes)}"
    )


def report_permit_file(result: PermitFile, out: TextIO) -> None:
    """Print what a permit file holds, then its error if any."""
    if result.permit is not None:
        permit = result.permit
        print(
            f"{result.path}: permit {permit.number}, sealed by key {result.key_ids[0]}, "
            f"server domain ({len(permit.servers)}): {_host_list(permit.servers)}",
            file=out,
        )
        for index, product in enumerate(permit.products, start=1):
            print(f"{result.path}: {_describe_product(index, product)}", file=out)
    if result.error is not None:
        print(str(result.error), file=out)
        verified = len(result.products)
        if result.permit is not None:
            print(
                f"{result.path}: INVALID after {verified} valid product(s)",
                file=out,
            )
        else:
            print(f"{result.path}: INVALID", file=out)
    else:
        print(f"{result.path}: valid, {len(result.products)} product(s)", file=out)


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    """Verify a sealed permit against a directory of trusted keys."""
    keys_dir = Path(args.keys)
    if not keys_dir.is_dir():
        raise ToolError(f"--keys {keys_dir}: no such directory (it holds the *.pub keys)")
    trusted = TrustedKeys.load(keys_dir)
    for problem in trusted.problems:
        print(f"{PROG}: warning: {problem}", file=sys.stderr)
    if not trusted.keys:
        print(f"{PROG}: warning: no usable *.pub key in {keys_dir}", file=sys.stderr)
    permit_path = Path(args.permit)
    if not permit_path.is_file():
        raise ToolError(f"{permit_path}: no such permit file")
    result = read_permit_file(permit_path, trusted)
    report_permit_file(result, out)
    return 0 if result.ok else 1


def cmd_hostid(args: argparse.Namespace, out: TextIO) -> int:
    """Print this machine's unique id."""
    print(format_unique_id(local_unique_id()), file=out)
    return 0


def for_this_machine(permit: Permit, unique_id: int) -> Permit:
    """The demo permit with this machine's unique id.

    Every server of a demo domain runs on this machine (127.0.0.x addresses),
    and so does every locked node listed with one of the servers' unique ids.
    """
    placeholders = {server.unique_id for server in permit.servers}

    def here(host: HostId) -> HostId:
        return HostId(host.address, unique_id)

    return dataclasses.replace(
        permit,
        servers=tuple(here(server) for server in permit.servers),
        products=tuple(
            dataclasses.replace(
                product,
                locked_nodes=tuple(
                    here(node) if node.unique_id in placeholders else node
                    for node in product.locked_nodes
                ),
            )
            for product in permit.products
        ),
    )


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    """Seal ``DIR/demo.form`` for this machine into ``DIR/demo-hqn.permit``."""
    directory = Path(args.dir)
    form_path = directory / DEMO_FORM
    key = _load_key(directory / DEMO_KEY)
    try:
        permit = parse_form(_read_text(form_path, "demo form"), path=str(form_path))
    except PermitError as e:
        raise ToolError(str(e)) from None
    permit = for_this_machine(permit, local_unique_id())
    unique_id = permit.servers[0].unique_id
    try:
        sealed = sign_permit(
            permit,
            key,
            title=f"DEMO permit, sealed by '{PROG} demo' for this machine "
            f"({format_unique_id(unique_id)}) with the demo publisher key",
        )
    except ValueError as e:
        raise ToolError(f"{form_path}: {e}") from None
    output = directory / DEMO_PERMIT
    _write_text(output, sealed)
    pub_path = directory / DEMO_PUB
    if pub_path.is_file():
        result = read_permit_file(output, TrustedKeys.load(directory))
        if result.error is not None:
            raise ToolError(f"{output} does not verify with {pub_path}: {result.error}")
    print(
        f"wrote {output}: permit {permit.number}, {len(permit.products)} product(s), "
        f"domain {_host_list(permit.servers)}",
        file=out,
    )
    return 0


def cmd_servercert(args: argparse.Namespace, out: TextIO) -> int:
    """Make a server key for a permit's domain, certified by the publisher key."""
    from hqnlsd.permits.servercert import make_server_key, write_server_key

    key = _load_key(Path(args.key))
    permit_path = Path(args.permit)
    if not permit_path.is_file():
        raise ToolError(f"{permit_path}: no such permit file")
    result = read_permit_file(permit_path, TrustedKeys.of(key.public_key))
    if result.error is not None or result.permit is None:
        raise ToolError(
            f"{permit_path} is not a valid permit sealed with {args.key}: {result.error}"
        )
    permit = result.permit
    server_key = make_server_key(key, permit)
    key_path, cert_path = write_server_key(args.output, server_key)
    print(
        f"wrote {key_path} (private, mode 0600: install it on each daemon of the domain, "
        "in its --server-keys directory)",
        file=out,
    )
    print(
        f"wrote {cert_path} (certificate: permit {permit.number}, "
        f"servers {_host_list(permit.servers)}, {len(permit.products)} product(s); "
        "install it next to the key)",
        file=out,
    )
    return 0


# -- entry point -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of hqn_mp."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Publisher tool: make keys, seal and check permits."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    keygen = commands.add_parser("keygen", help="write PREFIX.key (0600) and PREFIX.pub")
    keygen.add_argument("prefix", metavar="PREFIX")
    keygen.set_defaults(run=cmd_keygen)

    sign = commands.add_parser("sign", help="seal a permit form")
    sign.add_argument("--key", required=True, metavar="PREFIX.key")
    sign.add_argument("form", metavar="FORM")
    sign.add_argument("-o", "--output", metavar="OUT", help="write here, not to stdout")
    sign.set_defaults(run=cmd_sign)

    check = commands.add_parser("check", help="verify a sealed permit")
    check.add_argument("--keys", required=True, metavar="DIR", help="directory of *.pub keys")
    check.add_argument("permit", metavar="PERMIT")
    check.set_defaults(run=cmd_check)

    hostid = commands.add_parser("hostid", help="print this machine's unique id")
    hostid.set_defaults(run=cmd_hostid)

    demo = commands.add_parser(
        "demo", help=f"seal DIR/{DEMO_FORM} for this machine into DIR/{DEMO_PERMIT}"
    )
    demo.add_argument("dir", metavar="DIR", nargs="?", default="conf")
    demo.set_defaults(run=cmd_demo)

    servercert = commands.add_parser(
        "servercert",
        help="make a server key for a permit's domain: OUT.serverkey + OUT.servercert",
    )
    servercert.add_argument("--key", required=True, metavar="PREFIX.key")
    servercert.add_argument("permit", metavar="PERMIT")
    servercert.add_argument("-o", "--output", required=True, metavar="OUT",
                            help="prefix of the files written")
    servercert.set_defaults(run=cmd_servercert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run hqn_mp with ``argv`` (default: the command line); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed
        return e.code if isinstance(e.code, int) else 2
    run: Callable[[argparse.Namespace, TextIO], int] = args.run
    try:
        return run(args, sys.stdout)
    except ToolError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyFileError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
