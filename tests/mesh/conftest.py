"""Run multicast tests in a private network namespace.

A test marked ``@pytest.mark.netns`` is re-run by this hook in a child pytest under
``unshare -rn`` (a new user + network namespace with only ``lo`` up), so its mDNS traffic
never leaves the namespace and never meets other test runs on the machine.  Where user
namespaces are not allowed the test is skipped with the reason.  Keep such tests' setup in
the test body: fixtures run in the parent too.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

import pytest

NETNS_ENV = "EDGELOOP_TEST_IN_NETNS"
CHILD_TIMEOUT_S = 240


def pytest_configure(config):
    config.addinivalue_line("markers", "netns: runs in its own network namespace (unshare -rn; lo only)")


@functools.lru_cache(maxsize=1)
def netns_unavailable() -> str | None:
    """None when ``unshare -rn`` with ``ip link set lo up`` works here, else why not."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed, so the test cannot get its own network namespace"
    try:
        done = subprocess.run(["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True,
                              text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare -rn failed: {exc}"
    if done.returncode != 0:
        return f"unprivileged network namespaces are not allowed here (unshare -rn: {done.stderr.strip()})"
    return None


def in_netns() -> bool:
    return os.environ.get(NETNS_ENV) == "1"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if pyfuncitem.get_closest_marker("netns") is None or in_netns():
        return None
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    script = f'ip link set lo up && exec "{sys.executable}" -m pytest -q -x -p no:cacheprovider "$0"'
    env = {**os.environ, NETNS_ENV: "1"}
    try:
        done = subprocess.run(["unshare", "-rn", "sh", "-c", script, pyfuncitem.nodeid],
                              cwd=str(pyfuncitem.config.rootpath), env=env, capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"test in network namespace ran past {CHILD_TIMEOUT_S}s:\n{exc.stdout or ''}")
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"test failed in its network namespace (exit {done.returncode}):\n{output}", pytrace=False)
    if " passed" not in output:
        pytest.fail(f"test in network namespace did not pass:\n{output}", pytrace=False)
    return True
