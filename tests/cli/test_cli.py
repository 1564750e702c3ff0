"""The `edgeloop` command: help, version, and `python -m edgeloop` as the same entry point."""
import subprocess
import sys

import edgeloop
from edgeloop.cli import build_parser, main


def test_version_flag(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"edgeloop {edgeloop.__version__}"


def test_every_listed_command_has_a_handler():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sub.choices, "no commands registered"
    for name, subparser in sub.choices.items():
        nested = [a for a in subparser._actions if getattr(a, "choices", None) and a.dest != "help"]
        if nested and isinstance(nested[0].choices, dict):
            for child in nested[0].choices.values():
                assert child.get_default("handler") is not None, f"{name} {child.prog} has no handler"
        else:
            assert subparser.get_default("handler") is not None, f"command {name!r} has no handler"


def test_python_dash_m_help_runs():
    out = subprocess.run(
        [sys.executable, "-m", "edgeloop", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "usage: edgeloop" in out.stdout


def test_a_closed_stdout_pipe_ends_quietly():
    """`edgeloop status | head`: the reader leaves early; no BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "edgeloop", "status", "--mesh", "--no-zeroconf",
                             "--seed", "127.0.0.1:1", "--wait", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141, err
    assert "BrokenPipeError" not in err and "Traceback" not in err, err
