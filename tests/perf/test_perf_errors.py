"""``edgeloop perf`` setup errors that need no server: exit 2 and a message naming the culprit."""
import socket

import pytest

from edgeloop.cli import main


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_url_exits_2_naming_the_url(capsys):
    url = f"127.0.0.1:{unused_port()}"
    code = main(["perf", "--url", url, "--model", "mlp", "--requests", "1", "--connect-timeout", "0.5"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"cannot reach a gRPC server at {url}" in err


def test_malformed_url_exits_2_naming_it(capsys):
    code = main(["perf", "--url", "localhost", "--model", "mlp"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--url 'localhost' is not a gRPC address; expected HOST:PORT" in err


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--concurrency", "1,0", "concurrency levels >= 1"),
        ("--concurrency", "four", "comma-separated list of integers"),
        ("--requests", "0", "an integer >= 1, got '0'"),
        ("--duration", "-1", "seconds > 0, got '-1'"),
        ("--batch-size", "x", "an integer >= 1, got 'x'"),
    ],
)
def test_bad_arguments_are_refused_by_the_parser(capsys, flag, value, expected):
    with pytest.raises(SystemExit) as exc:
        main(["perf", "--model", "mlp", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and expected in err
