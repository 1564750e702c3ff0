"""``edgeloop certs init DIR``: a CA, a server certificate (localhost, 127.0.0.1), a client certificate and a token."""
from __future__ import annotations

import sys


def register(sub) -> None:
    parser = sub.add_parser("certs", help="make TLS certificates and a fleet token for the example configs")
    actions = parser.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="write ca.pem/key, server.pem/key, client.pem/key and token into DIR")
    init.add_argument("directory", metavar="DIR")
    init.add_argument("--force", action="store_true", help="replace files that already exist")
    init.set_defaults(handler=run_init)


def run_init(args) -> int:
    from edgeloop.protocol.certs import init_certs

    try:
        paths = init_certs(args.directory, force=args.force)
    except (FileExistsError, OSError) as exc:
        print(f"edgeloop certs init: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"wrote {path}")
    print("use them under [auth]: token_file, tls_ca = ca.pem, tls_cert/tls_key = server.* (cloud) "
          "or client.* (edges; tls_client_auth = true on the cloud for mTLS)")
    return 0
