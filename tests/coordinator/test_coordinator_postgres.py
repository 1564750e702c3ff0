"""Two real ``edgeloop cloud`` processes on one PostgreSQL database: edges upload to either and nothing
is lost or stored twice; exactly one holds the continuous-training lease; kill it and the other takes
over within ``storage.lease_s``."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from coordkit import join, sample_batch

from edgeloop.protocol import auth as fleet_auth
from edgeloop.protocol import mesh_pb2_grpc
from edgeloop.store import PostgresStore

pytestmark = pytest.mark.slow
LEASE_S = 1.5
START_TIMEOUT_S = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cloud(tmp_path, name: str, url: str):
    config = tmp_path / f"{name}.toml"
    config.write_text(f'[node]\nid = "{name}"\nhost = "127.0.0.1"\ngrpc_port = {free_port()}\n'
                      f'metrics_port = {free_port()}\n'
                      f'[storage]\ndatabase = "{url}"\nartifact_dir = "artifacts"\nlease_s = {LEASE_S}\n'
                      f'[training]\nenabled = true\ninterval_ms = 200\n')
    with open(tmp_path / f"{name}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "edgeloop", "cloud", "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline()
    assert "listening" in line, line + (tmp_path / f"{name}.log").read_text()
    port = int(line.split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1])
    proc.metrics_port = int(line.split("metrics on port ", 1)[1].rstrip(")\n"))
    return proc, port, tmp_path / f"{name}.log"


def leader_gauge(proc) -> float:
    """``edgeloop_coordinator_leader`` as the process's Prometheus endpoint reports it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.metrics_port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("edgeloop_coordinator_leader "):
                return float(line.split()[1])
    raise AssertionError("no edgeloop_coordinator_leader gauge")


def wait_for(check, timeout: float, period: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(period)
    return check()


@pytest.fixture
def two_clouds(tmp_path, postgres_url):
    procs = []
    try:
        for name in ("cloud-a", "cloud-b"):
            procs.append(start_cloud(tmp_path, name, postgres_url))
        yield procs
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            proc.stdout.close()


def test_two_coordinators_share_ingest_and_one_leads_until_killed(two_clouds, postgres_url):
    (proc_a, port_a, log_a), (proc_b, port_b, log_b) = two_clouds
    stubs = {}
    channels = []
    for name, port in (("a", port_a), ("b", port_b)):
        channel = fleet_auth.open_channel(f"127.0.0.1:{port}", None, None)
        channels.append(channel)
        stubs[name] = mesh_pb2_grpc.CoordinatorStub(channel)
    store = PostgresStore(postgres_url)
    try:
        for edge in ("edge-a", "edge-b", "edge-c"):
            join(stubs["a"], edge)
            join(stubs["b"], edge)
        # one database, one identity, whichever coordinator an edge joins (edges reset their cursor on a change)
        assert join(stubs["a"], "edge-a").database_id == join(stubs["b"], "edge-a").database_id \
            == store.database_id() != ""
        # three edges upload at once, each batch to one coordinator and then again to the other
        # (an edge that failed over after its ack was lost): every batch is stored once, by one of them
        results = {"a": [], "b": []}
        errors = []

        def upload(edge: str, first: str, second: str) -> None:
            try:
                for k in range(8):
                    ids = [f"{edge}-{k}-{j}" for j in range(25)]
                    for target in (first, second):
                        ack = stubs[target].UploadSamples(iter([sample_batch(f"{edge}-b{k}", ids, node=edge)]),
                                                          timeout=20)
                        results[target].append((tuple(ack.accepted_batch_ids), tuple(ack.duplicate_batch_ids)))
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=upload, args=args) for args in
                   (("edge-a", "a", "b"), ("edge-b", "b", "a"), ("edge-c", "a", "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        accepted = [b for r in results.values() for acc, _ in r for b in acc]
        duplicates = [b for r in results.values() for _, dup in r for b in dup]
        assert sorted(accepted) == sorted(f"{e}-b{k}" for e in ("edge-a", "edge-b", "edge-c") for k in range(8))
        assert sorted(duplicates) == sorted(accepted)  # every re-send was recognised across processes
        stored = store.sample_ids()
        assert len(stored) == len(set(stored)) == 3 * 8 * 25
        assert {n.node_id: n.samples_received for n in store.nodes()} == {"edge-a": 200, "edge-b": 200,
                                                                          "edge-c": 200}

        # exactly one coordinator holds the CT lease, and only it logged taking the loop
        holder = wait_for(lambda: store.lease("ct-loop"), 10)
        assert holder, "no coordinator took the lease"
        pids = {proc_a.pid: (proc_a, log_b, "cloud-b"), proc_b.pid: (proc_b, log_a, "cloud-a")}
        leader_pid = int(holder[0].split("/")[1])
        assert leader_pid in pids
        leader, follower_log, follower_id = pids[leader_pid]
        assert "running the continuous-training loop" not in follower_log.read_text()
        follower = proc_b if leader is proc_a else proc_a
        assert wait_for(lambda: leader_gauge(leader) == 1.0, 5) and leader_gauge(follower) == 0.0
        for _ in range(10):  # the follower keeps trying but never takes a lease that is renewed
            time.sleep(LEASE_S / 5)
            assert int(store.lease("ct-loop")[0].split("/")[1]) == leader_pid

        # kill the leader without a chance to release: the follower takes over within lease_s (+ its period)
        killed_at = time.monotonic()
        leader.send_signal(signal.SIGKILL)
        leader.wait(10)
        new = wait_for(lambda: (lambda h: h if h and h[0].startswith(follower_id + "/") else None)(
            store.lease("ct-loop")), LEASE_S * 2 + 5)
        took = time.monotonic() - killed_at
        assert new, f"the follower did not take the lease in {took:.1f} s: {store.lease('ct-loop')}"
        assert took <= LEASE_S + LEASE_S / 3 + 2.0  # expiry + one renewal period + slack for a loaded machine
        assert wait_for(lambda: "running the continuous-training loop" in follower_log.read_text(), 5)
        assert leader_gauge(follower) == 1.0
        events = [e for e in store.events("lease_acquired")]
        assert [e[3]["holder"].split("/")[0] for e in events][-1] == follower_id
        assert events[-1][3]["previous"] == holder[0]
    finally:
        store.close()
        for channel in channels:
            channel.close()


def test_an_unreachable_database_ends_the_cloud_process_with_the_url_but_not_its_password(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[storage]\ndatabase = "postgresql://edgeloop:hunter2@127.0.0.1:1/fleet"\n'
                      f'[node]\nmetrics_port = {free_port()}\ngrpc_port = {free_port()}\n')
    done = subprocess.run([sys.executable, "-m", "edgeloop", "cloud", "--config", str(config)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "cannot connect to PostgreSQL at postgresql://edgeloop:***@127.0.0.1:1/fleet" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


def fenced_writes(proc) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.metrics_port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("edgeloop_coordinator_fenced_writes_total "):
                return float(line.split()[1])
    raise AssertionError("no edgeloop_coordinator_fenced_writes_total counter")


def test_a_paused_leader_is_replaced_and_steps_down_when_it_wakes(two_clouds, postgres_url):
    """SIGSTOP the leader (alive, connections open, maybe mid-transaction): the other takes over within
    lease_s (+ the server's idle-in-transaction limit when it froze holding the write lock); SIGCONT: the old
    leader stops its loop and never takes the lease back; whatever it wrote as leader after the takeover
    was refused under its old epoch."""
    from edgeloop.store.postgres import IDLE_IN_TRANSACTION_MS

    (proc_a, _, log_a), (proc_b, _, log_b) = two_clouds
    store = PostgresStore(postgres_url)
    leader = None
    try:
        row = wait_for(lambda: (lambda r: r if r and r[0] else None)(store.lease_row("ct-loop")), 10)
        assert row, "no coordinator took the lease"
        holder, _, epoch = row
        by_pid = {proc_a.pid: (proc_a, log_a, proc_b, "cloud-b"), proc_b.pid: (proc_b, log_b, proc_a, "cloud-a")}
        leader, leader_log, follower, follower_id = by_pid[int(holder.split("/")[1])]
        assert wait_for(lambda: leader_gauge(leader) == 1.0, 5)

        paused_at = time.monotonic()
        leader.send_signal(signal.SIGSTOP)
        bound = LEASE_S + LEASE_S / 3 + IDLE_IN_TRANSACTION_MS / 1000 + 2.0
        new = wait_for(lambda: (lambda r: r if r and r[0].startswith(follower_id + "/") else None)(
            store.lease_row("ct-loop")), bound + 5)
        took = time.monotonic() - paused_at
        assert new and new[2] == epoch + 1, f"no takeover in {took:.1f} s: {store.lease_row('ct-loop')}"
        assert took <= bound
        assert wait_for(lambda: leader_gauge(follower) == 1.0, 5)

        leader.send_signal(signal.SIGCONT)
        assert wait_for(lambda: leader_gauge(leader) == 0.0, 10), "the woken leader still says it leads"
        assert wait_for(lambda: "lost by" in leader_log.read_text() or "stepped down" in leader_log.read_text(), 5)
        for _ in range(5):  # it keeps trying, but never takes a lease that is renewed
            time.sleep(LEASE_S / 5)
            assert store.lease_row("ct-loop")[0::2] == (new[0], epoch + 1)
        refused = [e[3] for e in store.events("fenced_write_refused")]
        assert all(r["holder"] == holder and r["epoch"] == epoch for r in refused)
        assert fenced_writes(leader) == len(refused)
    finally:
        if leader is not None and leader.poll() is None:
            leader.send_signal(signal.SIGCONT)  # so the fixture's SIGTERM can stop it
        store.close()
