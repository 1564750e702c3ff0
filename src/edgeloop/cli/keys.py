"""``edgeloop keys init DIR``: the coordinator's Ed25519 signing key pair for model manifests."""
from __future__ import annotations

import sys


def register(sub) -> None:
    parser = sub.add_parser("keys", help="signing keys for fleet delivery")
    actions = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="write DIR/signing.key (0600) and DIR/signing.pub")
    init.add_argument("dir", metavar="DIR")
    init.set_defaults(handler=run_init)


def run_init(args) -> int:
    from edgeloop.delivery.keys import KeyFileError, init_keys

    try:
        private, public = init_keys(args.dir)
    except (KeyFileError, OSError) as exc:
        print(f"edgeloop keys: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {private} (private, mode 0600: the cloud config's [delivery] signing_key) and {public} "
          f"(public: list it in each edge's [delivery] trusted_keys)")
    return 0
