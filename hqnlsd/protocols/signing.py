"""Signed replies: a server's challenge/response over the client protocol.

A client that sends ``challenge=HEX`` with a REQUEST or an UPDATE gets the reply
with ``signature=HEX`` (the server key's Ed25519 signature over
`reply_message`: the challenge, the verb, the handle, publisher, product,
version, the reply's status and every reply field in order) and
``servercert=TOKEN``. The certificates and keys are the permit model's
(`hqnlsd.permits.servercert`, which explains the checks); this module puts
them on the wire: the daemon signs with `sign_reply`, the client library
checks with `verify_reply`.
"""

from __future__ import annotations

import ipaddress

from cryptography.exceptions import InvalidSignature

from hqnlsd.permits.seal import TrustedKeys
from hqnlsd.permits.servercert import (
    CanonicalWriter,
    CertificateError,
    NotGenuine,
    ServerCertificate,
    ServerKey,
)
from hqnlsd.protocols.replies import Err, Ok

REPLY_PREFIX = b"hqnlsd signed reply v1\x00"
#: The reply fields this module adds; never part of the signed bytes.
SIGNATURE_FIELD = "signature"
CERT_FIELD = "servercert"
#: The verbs whose replies are signed.
SIGNED_VERBS = ("REQUEST", "UPDATE")


def reply_message(
    *,
    challenge: bytes,
    verb: str,
    handle: str,
    publisher: str,
    product: str,
    version: str,
    reply: Ok | Err,
) -> bytes:
    """The canonical bytes a server signs for one reply (signature fields excluded)."""
    out = CanonicalWriter(REPLY_PREFIX)
    out.blob(challenge)
    out.text(verb)
    out.text(handle)
    out.text(publisher)
    out.text(product)
    out.text(version)
    if isinstance(reply, Ok):
        out.text("OK")
        out.text(reply.word)
    else:
        out.text("ERR")
        out.text(reply.status.name)
        out.text(reply.msg)
    fields = [(k, v) for k, v in reply.fields if k not in (SIGNATURE_FIELD, CERT_FIELD)]
    out.integer(len(fields))
    for key, value in fields:
        out.text(key)
        out.text(value)
    return out.result()


def sign_reply(
    key: ServerKey | None,
    *,
    challenge: bytes | None,
    verb: str,
    handle: str,
    publisher: str,
    product: str,
    version: str,
    reply: Ok | Err,
) -> Ok | Err:
    """``reply`` with ``signature=`` and ``servercert=`` added, if it can be signed.

    Unchanged without a challenge or without a key for the product's permit: a
    client that asked for a signature then sees none and knows.
    """
    if challenge is None or key is None:
        return reply
    message = reply_message(
        challenge=challenge,
        verb=verb,
        handle=handle,
        publisher=publisher,
        product=product,
        version=version,
        reply=reply,
    )
    extra = (
        (SIGNATURE_FIELD, key.private_key.sign(message).hex()),
        (CERT_FIELD, key.certificate.token()),
    )
    if isinstance(reply, Ok):
        return Ok(reply.fields + extra, reply.word)
    return Err(reply.status, reply.msg, reply.fields + extra)


def verify_reply(
    trusted: TrustedKeys,
    *,
    server: ipaddress.IPv4Address,
    challenge: bytes,
    verb: str,
    handle: str,
    publisher: str,
    product: str,
    version: str,
    reply: Ok | Err,
) -> ServerCertificate:
    """Check a signed reply from ``server`` (the address connected to); NotGenuine if not.

    Returns the verified certificate.
    """
    fields = dict(reply.fields)
    signature_hex = fields.get(SIGNATURE_FIELD)
    token = fields.get(CERT_FIELD)
    if signature_hex is None or token is None:
        raise NotGenuine(
            f"the server at {server} did not sign its reply to a challenge: it holds no "
            "server key certified by the publisher"
        )
    try:
        cert = ServerCertificate.from_token(token)
    except CertificateError as e:
        raise NotGenuine(f"the server at {server} sent an unreadable certificate: {e}") from None
    cert.verify(trusted)
    if not cert.certifies(server):
        raise NotGenuine(
            f"the server at {server} is not in the certified server domain of permit "
            f"{cert.permit_number} ({', '.join(str(h.address) for h in cert.servers)})"
        )
    if (publisher, product, version) not in cert.products:
        raise NotGenuine(
            f"the server's certificate (permit {cert.permit_number}) does not cover "
            f"{publisher} {product} {version}"
        )
    try:
        signature = bytes.fromhex(signature_hex)
        cert.server_key.verify(
            signature,
            reply_message(
                challenge=challenge,
                verb=verb,
                handle=handle,
                publisher=publisher,
                product=product,
                version=version,
                reply=reply,
            ),
        )
    except (ValueError, InvalidSignature):
        raise NotGenuine(
            f"the reply of the server at {server} is not signed by its certified key "
            "over this request's challenge (a forged or replayed reply)"
        ) from None
    return cert
