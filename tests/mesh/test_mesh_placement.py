"""Placement over canonical snapshots: determinism, minimal movement, weights, the cap."""
from __future__ import annotations

import hashlib
import math
import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from edgeloop.mesh.placement import NodeEntry, Placement, Snapshot

KEYS = [f"user-{i}" for i in range(10_000)]


def make_snapshot(n: int, *, weights=None, epoch: int = 1, capacity_factor=None, models=None) -> Snapshot:
    nodes = [
        NodeEntry.build(f"edge-{i:02d}", (weights[i] if weights else 1.0), models or {"mlp": [1]})
        for i in range(n)
    ]
    return Snapshot.build(nodes, epoch, capacity_factor)


def owners_digest(placement: Placement, keys=KEYS, model="mlp") -> str:
    return hashlib.sha256("\n".join(placement.owner(k, model) for k in keys).encode()).hexdigest()


# Golden values: placement is a wire contract. If these change, every mesh in the field would
# disagree with nodes running the previous build - change them only with a protocol version bump.
GOLDEN_SNAPSHOT_DIGEST = "90c040f7359c5c98928bfe4e35df3d9dad1414e5885edc3a598f7c5b465a118a"
GOLDEN_OWNERS_DIGEST = "f86b7188b607e6a9a0df298a0f65f1f94a30b0043f929110f60ad1bee85e722a"
GOLDEN_WEIGHTED_OWNERS_DIGEST = "e313e9fb410827a41cff73e4bf58d0ca5e4c8ff0e558c67ecc91c601a137f279"


def test_golden_snapshot_and_owners():
    placement = Placement(make_snapshot(10))
    assert placement.digest == GOLDEN_SNAPSHOT_DIGEST
    assert owners_digest(placement) == GOLDEN_OWNERS_DIGEST
    weighted = Placement(make_snapshot(10, weights=[1, 2, 3, 1, 2, 3, 1, 2, 3, 4]))
    assert owners_digest(weighted) == GOLDEN_WEIGHTED_OWNERS_DIGEST


def test_same_owners_in_another_process_with_another_hash_seed():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from test_mesh_placement import Placement, make_snapshot, owners_digest;"
        "print(owners_digest(Placement(make_snapshot(10))))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, os.path.dirname(__file__)], env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == owners_digest(Placement(make_snapshot(10)))


def test_snapshot_is_canonical_under_permutation():
    nodes = list(make_snapshot(12, weights=[1 + i % 4 for i in range(12)]).nodes)
    shuffled = nodes[:]
    random.Random(7).shuffle(shuffled)
    a, b = Placement(Snapshot.build(nodes, 3)), Placement(Snapshot.build(shuffled, 3))
    assert a.digest == b.digest
    assert a.snapshot.canonical_json() == b.snapshot.canonical_json()
    assert all(a.owner(k, "mlp") == b.owner(k, "mlp") for k in KEYS[:2000])


def test_digest_covers_epoch_weights_and_models():
    base = make_snapshot(5).digest
    assert make_snapshot(5, epoch=2).digest != base
    assert make_snapshot(5, weights=[1, 1, 1, 1, 2]).digest != base
    assert make_snapshot(5, models={"mlp": [1, 2]}).digest != base


def test_preference_starts_with_owner_and_lists_every_candidate():
    placement = Placement(make_snapshot(7, weights=[1, 2, 1, 3, 1, 1, 2]))
    for key in KEYS[:300]:
        pref = placement.preference(key, "mlp")
        assert pref[0] == placement.owner(key, "mlp")
        assert sorted(pref) == sorted(placement.candidates("mlp"))


def _moved(before: Placement, after: Placement) -> list[tuple[str, str, str]]:
    return [(k, before.owner(k, "mlp"), after.owner(k, "mlp")) for k in KEYS
            if before.owner(k, "mlp") != after.owner(k, "mlp")]


def test_join_moves_only_keys_to_the_new_node():
    before = Placement(make_snapshot(9))
    after = Placement(make_snapshot(10))  # adds edge-09
    moved = _moved(before, after)
    assert moved and all(new == "edge-09" for _, _, new in moved)
    assert len(moved) <= 1.15 * len(KEYS) / 10


def test_leave_moves_only_the_leaving_nodes_keys():
    before = Placement(make_snapshot(10))
    nodes = [n for n in before.snapshot.nodes if n.node_id != "edge-04"]
    after = Placement(Snapshot.build(nodes, 2))
    moved = _moved(before, after)
    assert moved and all(old == "edge-04" for _, old, _ in moved)
    assert len(moved) == sum(1 for k in KEYS if before.owner(k, "mlp") == "edge-04")
    # each moved key goes to its second choice under the old placement (the fallback list is honest)
    assert all(before.preference(k, "mlp")[1] == new for k, _, new in moved)


def test_weighted_shares_follow_weights():
    weights = [1, 2, 3, 4]
    placement = Placement(make_snapshot(4, weights=weights))
    keys = [f"k{i}" for i in range(40_000)]
    counts = Counter(placement.assign(keys, "mlp"))
    for i, w in enumerate(weights):
        share = counts[f"edge-{i:02d}"] / len(keys)
        assert abs(share - w / sum(weights)) < 0.05 * w / sum(weights) + 0.005


def test_bounded_load_cap_is_never_exceeded():
    weights = [1, 1, 1, 1, 1, 1, 1, 4]
    keys = [f"k{i}" for i in range(5_000)]
    capped = Placement(make_snapshot(8, weights=weights, capacity_factor=1.0))
    loose = Placement(make_snapshot(8, weights=weights, capacity_factor=10.0))
    assigned = capped.assign(keys, "mlp")
    counts = Counter(assigned)
    for i, w in enumerate(weights):
        assert counts[f"edge-{i:02d}"] <= math.ceil(1.0 * len(keys) * w / sum(weights))
    # a loose cap changes nothing; a key moved off its owner only because the owner was full
    assert loose.assign(keys, "mlp") == [loose.owner(k, "mlp") for k in keys]
    caps = {f"edge-{i:02d}": math.ceil(1.0 * len(keys) * w / sum(weights)) for i, w in enumerate(weights)}
    moved = [(k, n) for k, n in zip(keys, assigned) if n != capped.owner(k, "mlp")]
    assert moved, "a cap of exactly the fair share must move some keys"
    for key, node in moved:
        assert counts[capped.owner(key, "mlp")] == caps[capped.owner(key, "mlp")]


def test_only_nodes_serving_the_model_and_version_are_candidates():
    nodes = [
        NodeEntry.build("a", 1.0, {"mlp": [1], "iris": [2]}),
        NodeEntry.build("b", 1.0, {"mlp": [1, 2]}),
        NodeEntry.build("c", 1.0, {"iris": [2]}),
    ]
    placement = Placement(Snapshot.build(nodes, 1))
    assert placement.candidates("mlp") == ("a", "b")
    assert placement.candidates("mlp", 2) == ("b",)
    assert placement.candidates("iris") == ("a", "c")
    assert {placement.owner(k, "iris") for k in KEYS[:200]} == {"a", "c"}
    assert placement.owner("x", "nope") is None
    assert placement.preference("x", "nope") == []


def test_snapshot_json_round_trip_keeps_the_digest():
    snap = make_snapshot(6, weights=[1, 2, 1, 2, 1, 0.5], capacity_factor=1.25, epoch=9)
    assert Snapshot.from_json(snap.to_json()).digest == snap.digest


def test_bad_arguments_name_what_is_wrong():
    with pytest.raises(ValueError, match="weight of node 'x'.*-1"):
        NodeEntry.build("x", -1)
    with pytest.raises(ValueError, match="node id 'a' appears twice"):
        Snapshot.build([NodeEntry.build("a"), NodeEntry.build("a")])
    with pytest.raises(ValueError, match="capacity_factor: got 0.5"):
        Snapshot.build([NodeEntry.build("a")], capacity_factor=0.5)
    with pytest.raises(TypeError, match="key: got int"):
        Placement(make_snapshot(3)).owner(17, "mlp")


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5, 3.0, 1.0, 1.5, 2.5, 1.0, 4.0, 0.25] * 4, [2.0] * 40])
def test_owner_preference_assign_are_the_kernel_decisions(weights):
    # The mesh adds no rule of its own: owner/preference/assign are hrw_assign/hrw_rank over
    # the stable hashes of the node ids (equal weights: the unweighted integer compare).
    from edgeloop.kernels import hrw_assign, hrw_rank, stable_hash, stable_hash_many

    snap = make_snapshot(40, weights=weights, capacity_factor=1.05)
    placement = Placement(snap)
    ids = [n.node_id for n in snap.nodes]
    node_hashes = stable_hash_many(ids)
    w = None if weights is None or len(set(weights)) == 1 else [n.weight for n in snap.nodes]
    keys = KEYS[:3000]
    first = hrw_assign(stable_hash_many(keys), node_hashes, w)
    assert [placement.owner(k, "mlp") for k in keys] == [ids[i] for i in first]
    assert placement.assign(keys, "mlp") == [
        ids[i] for i in hrw_assign(stable_hash_many(keys), node_hashes, w, capacity_factor=1.05)
    ]
    for k in keys[:200]:
        assert placement.preference(k, "mlp") == [ids[i] for i in hrw_rank(stable_hash(k), node_hashes, w)]


def test_single_candidate_owner_and_preference():
    placement = Placement(make_snapshot(1))
    assert placement.owner("k", "mlp") == "edge-00"
    assert placement.preference("k", "mlp") == ["edge-00"]
    assert placement.assign(["a", "b"], "mlp") == ["edge-00", "edge-00"]
    assert placement.assign([], "mlp") == []
