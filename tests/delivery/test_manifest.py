"""Manifests: canonical signing, verification against several trusted keys, expiry, admission rules."""
import os
import stat

import pytest

from edgeloop.delivery import activation, manifest as mf
from edgeloop.delivery.keys import KeyFileError, init_keys, load_private_key, load_public_key

NOW = 1_800_000_000_000


def keypair(path):
    private, public = init_keys(path)
    return load_private_key(private), load_public_key(public)


def doc(version=2, created=NOW - 1000, ttl=3_600_000):
    data = os.urandom(5000)
    return mf.build("m", version, mf.hashlib.sha256(data).hexdigest(), len(data), mf.chunk_hashes(data, 1024),
                    created, chunk_bytes=1024, ttl_ms=ttl)


def test_keys_init_writes_a_private_key_only_its_owner_reads_and_refuses_to_overwrite(tmp_path):
    private, public = init_keys(tmp_path / "k")
    assert private.name == "signing.key" and public.name == "signing.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(KeyFileError, match="already exists"):
        init_keys(tmp_path / "k")
    with pytest.raises(KeyFileError, match="not an Ed25519 public key"):
        load_public_key(private)


def test_a_signed_manifest_verifies_with_any_trusted_key_and_breaks_on_any_change(tmp_path):
    old_priv, old_pub = keypair(tmp_path / "old")
    new_priv, new_pub = keypair(tmp_path / "new")
    signed = mf.sign(doc(), new_priv)
    raw = mf.encode(signed)
    parsed = mf.parse(raw)
    assert mf.verify(parsed, [old_pub, new_pub], NOW)  # rotation: either key
    with pytest.raises(mf.ManifestError) as err:
        mf.verify(parsed, [old_pub], NOW)
    assert err.value.reason == mf.BAD_SIGNATURE
    for field, value in (("version", 3), ("sha256", "0" * 64), ("expires_ms", NOW * 2)):
        tampered = dict(parsed, **{field: value})
        with pytest.raises(mf.ManifestError) as err:
            mf.verify(tampered, [new_pub], NOW)
        assert err.value.reason == mf.BAD_SIGNATURE, field


def test_expired_unsigned_and_malformed_manifests_are_refused_with_their_reason(tmp_path):
    priv, pub = keypair(tmp_path / "k")
    policy = activation.Policy(trusted_keys=(pub,), require_signed=True)
    expired = mf.encode(mf.sign(doc(created=NOW - 10_000, ttl=5_000), priv))
    cases = [(expired, mf.EXPIRED), (mf.encode(doc()), mf.UNSIGNED), (b"", mf.UNSIGNED), (b"[1]", mf.MALFORMED),
             (b"{" * 10, mf.MALFORMED)]
    for raw, reason in cases:
        with pytest.raises(mf.ManifestError) as err:
            activation.admit(raw, policy, NOW, 0, model="m", version=2)
        assert err.value.reason == reason, raw[:40]
    bad_chunks = dict(doc(), chunks=["ab"] * 5)
    with pytest.raises(mf.ManifestError, match="chunks"):
        mf.parse(mf.encode(bad_chunks))


def test_downgrade_and_replay_are_refused_unless_a_signed_rollback_to_a_held_version(tmp_path):
    priv, pub = keypair(tmp_path / "k")
    policy = activation.Policy(trusted_keys=(pub,), require_signed=True)
    d = mf.sign(doc(version=2), priv)
    assert activation.admit(mf.encode(d), policy, NOW, 1, model="m", version=2)["version"] == 2
    for accepted in (2, 3):  # replay of the same version, downgrade below a newer one
        with pytest.raises(mf.ManifestError) as err:
            activation.admit(mf.encode(d), policy, NOW, accepted, model="m", version=2)
        assert err.value.reason == mf.DOWNGRADE
    rollback = mf.encode(mf.sign(mf.rollback_statement("m", 1, "r1", NOW - 10), priv))
    assert activation.admit(rollback, policy, NOW, 2, model="m", version=1, rollback_to_held=True)
    with pytest.raises(mf.ManifestError) as err:
        activation.admit(rollback, policy, NOW, 2, model="m", version=1, rollback_to_held=False)
    assert err.value.reason == mf.DOWNGRADE
    with pytest.raises(mf.ManifestError) as err:  # a statement about another model
        activation.admit(rollback, policy, NOW, 2, model="other", version=1, rollback_to_held=True)
    assert err.value.reason == mf.MISMATCH


def test_a_development_edge_takes_an_unsigned_manifest_but_never_a_bad_signature(tmp_path):
    priv, pub = keypair(tmp_path / "k")
    _other, other_pub = keypair(tmp_path / "o")
    dev = activation.Policy()
    assert activation.admit(b"", dev, NOW, 0, model="m", version=2) is None
    assert activation.admit(mf.encode(doc()), dev, NOW, 0, model="m", version=2)["version"] == 2
    with pytest.raises(mf.ManifestError) as err:
        activation.admit(mf.encode(mf.sign(doc(), priv)), activation.Policy(trusted_keys=(other_pub,)), NOW, 0,
                         model="m", version=2)
    assert err.value.reason == mf.BAD_SIGNATURE


def test_activation_stops_at_the_first_failing_step_and_names_it():
    ran = []

    def fail():
        raise ValueError("outputs differ")

    with pytest.raises(activation.ActivationError) as err:
        activation.activate({"swap": lambda: ran.append("swap"), "self_test": fail,
                             "load": lambda: ran.append("load")})
    assert err.value.step == "self_test" and "outputs differ" in str(err.value) and ran == ["load"]
