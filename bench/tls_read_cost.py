"""What one `SSLObject.read()` costs when it raises `SSLWantReadError`, next to decrypting a record.

    python bench/tls_read_cost.py [--size BYTES] [--number N]

A client and a server `ssl.SSLObject` shake hands over memory BIOs (no sockets, no event loop),
then two steps are timed per call: a read with nothing to decrypt (it raises), and a message
the client encrypts and the server decrypts (its record moved between the BIOs). asyncio's TLS
protocol pays the first once per batch of records it receives; ferroloop's
(`python/ferroloop/_tls.py`) skips it. Prints the best of three runs, microseconds per call.
"""

from __future__ import annotations

import argparse
import os
import ssl
import timeit

import test


def keycert() -> str:
    base = os.path.dirname(test.__file__)
    for path in (os.path.join(base, "certdata", "keycert.pem"), os.path.join(base, "keycert.pem")):
        if os.path.exists(path):
            return path
    raise SystemExit("CPython's test certificate (test/certdata/keycert.pem) is not installed")


def connected_pair() -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.SSLObject, ssl.MemoryBIO]:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(keycert())
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    try:  # the session tickets the server sent after the handshake
        client.read(1)
    except ssl.SSLWantReadError:
        pass
    return client, c_out, server, s_in


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="message size in bytes (default 1024)")
    parser.add_argument("--number", type=int, default=50_000, help="calls per measurement (default 50000)")
    args = parser.parse_args()
    client, c_out, server, s_in = connected_pair()
    message = b"x" * args.size

    def read_nothing() -> None:
        try:
            server.read(262144)
        except ssl.SSLWantReadError:
            pass

    def encrypt_move_decrypt() -> None:
        client.write(message)
        s_in.write(c_out.read())
        server.read(262144)

    print(f"{ssl.OPENSSL_VERSION}, {client.version()}, {args.size}-byte messages, us per call:")
    for name, step in (
        ("read() raising SSLWantReadError", read_nothing),
        ("encrypt + decrypt one message", encrypt_move_decrypt),
    ):
        best = min(timeit.repeat(step, number=args.number, repeat=3)) / args.number
        print(f"  {name:34s} {best * 1e6:7.2f}")


if __name__ == "__main__":
    main()
