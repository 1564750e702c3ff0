"""Status helpers: quoted client values and whole messages stay bounded."""
from __future__ import annotations

import grpc

from edgeloop.protocol.errors import MESSAGE_LIMIT, QUOTE_LIMIT, invalid_argument, quote, quote_shape


def test_quote_keeps_short_values_as_repr():
    assert quote("mlp") == "'mlp'" and quote(b"ab") == "b'ab'" and quote(7) == "7"
    assert quote("mlp\n") == "'mlp\\n'"  # a newline cannot split a log line or a message


def test_quote_cuts_long_values_and_notes_their_length():
    text = quote("x" * 10**6)
    assert text.endswith("... (1000000 characters in all)") and len(text) < QUOTE_LIMIT + 50
    assert quote(b"y" * 300).endswith("(300 bytes in all)")
    assert quote(list(range(10**4))).endswith("characters in all)")
    escaped = quote("\x00" * 1000)  # escapes make the repr 4x longer than the value: still cut
    assert len(escaped) < QUOTE_LIMIT + 50 and "(1000 characters in all)" in escaped


def test_quote_shape_summarises_long_shapes():
    assert quote_shape([1, 2, 3]) == "[1, 2, 3]"
    long = quote_shape(list(range(100)))
    assert long.startswith("[0, 1, 2") and long.endswith("(100 dimensions in all)") and "99" not in long


def test_a_message_is_capped_as_a_backstop():
    error = invalid_argument("m" * 100_000)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(error.message) < MESSAGE_LIMIT + 100 and error.message.endswith("(message cut from 100000 characters)")
