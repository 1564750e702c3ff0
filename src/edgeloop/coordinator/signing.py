"""The coordinator's signing keys, as the CLI reaches them (``edgeloop keys init``).

``cli`` may import ``coordinator`` but not ``delivery``; the key files themselves are ``delivery``'s.
"""
from edgeloop.delivery.keys import KeyFileError, init_keys

__all__ = ["KeyFileError", "init_keys"]
