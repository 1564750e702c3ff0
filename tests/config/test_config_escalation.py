"""The ``escalation`` table of a model: what it becomes, and each bad value refused by name."""

from __future__ import annotations

import pytest

from edgeloop.config import ConfigError, EscalationPolicy, parse_edge_config

BASE = {"node": {"id": "edge-t"}}


def parse(escalation, where="models"):
    table = {"small": {"escalation": escalation}} if where == "models" else {"escalation": escalation}
    return parse_edge_config({**BASE, "serving": {where: table}}, source="edge.toml")


def test_zone_target_with_a_cap():
    config = parse({"target_model": "big", "target_zone": "cloud", "output": "probabilities", "rule": "top1",
                    "threshold": 0.7, "budget_ms": 300, "max_share": 0.1, "max_burst": 5, "target_version": 2})
    assert config.serving.model("small").escalation == EscalationPolicy(
        target_model="big", output="probabilities", rule="top1", threshold=0.7, target_zone="cloud",
        target_version=2, budget_ms=300, max_share=0.1, max_burst=5)
    assert config.serving.model("other").escalation is None


def test_range_rule_and_address_target_in_model_defaults():
    config = parse({"target_model": "big", "target_address": "127.0.0.1:9001", "output": "y", "rule": "range",
                    "low": -1, "high": 1.5}, where="model_defaults")
    policy = config.serving.model("anything").escalation
    assert (policy.rule, policy.low, policy.high, policy.target_address, policy.budget_ms, policy.max_share) == (
        "range", -1.0, 1.5, "127.0.0.1:9001", 200, None)


OK = {"target_model": "big", "target_zone": "cloud", "output": "probabilities", "rule": "margin", "threshold": 0.2}


@pytest.mark.parametrize("change,key,fragment", [
    ({"rule": "median"}, "rule", "one of top1, margin, entropy, range"),
    ({"threshold": 1.2}, "threshold", "0..1"),
    ({"rule": "entropy", "threshold": -0.1}, "threshold", ">= 0"),
    ({"target_address": "127.0.0.1:9001"}, "target_zone", "exactly one of target_zone"),
    ({"target_zone": None}, "target_address", "exactly one of target_zone"),
    ({"target_zone": "cloud", "target_address": "nohost"}, "target_address", "'host:port'"),
    ({"target_model": "../etc"}, "target_model", "a model name"),
    ({"budget_ms": 0}, "budget_ms", "1..60000"),
    ({"max_share": 0}, "max_share", "(0, 1]"),
    ({"max_share": 1.5}, "max_share", "(0, 1]"),
    ({"max_burst": 0}, "max_burst", "1..65536"),
    ({"low": 0.0}, "low", "no low with rule 'margin'"),
    ({"rule": "range", "threshold": 0.2}, "threshold", "no threshold with rule 'range'"),
    ({"rule": "range", "threshold": None}, "low", "low, high or both"),
    ({"rule": "range", "threshold": None, "low": 2, "high": 1}, "high", ">= low"),
    ({"outptu": "x"}, "outptu", "did you mean 'output'"),
    ({"threshold": None}, "threshold", "a number in 0..1"),
])
def test_bad_values_are_refused_by_key(change, key, fragment):
    table = {k: v for k, v in {**OK, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        parse(table)
    assert info.value.key == f"serving.models.small.escalation.{key}"
    assert fragment in info.value.expected
    assert str(info.value).startswith("edge.toml: key ")


def test_escalation_must_be_a_table():
    with pytest.raises(ConfigError) as info:
        parse("cloud")
    assert info.value.key == "serving.models.small.escalation"


def test_toml_file(tmp_path):
    from edgeloop.config import load_edge_config

    path = tmp_path / "edge.toml"
    path.write_text('[node]\nid = "edge-t"\nzone = "edge"\n\n[serving.models.small.escalation]\n'
                    'target_model = "big"\ntarget_zone = "cloud"\noutput = "probabilities"\nrule = "entropy"\n'
                    'threshold = 0.5\nmax_share = 0.1\n')
    policy = load_edge_config(path).serving.model("small").escalation
    assert (policy.rule, policy.threshold, policy.target_zone, policy.max_share, policy.max_burst) == (
        "entropy", 0.5, "cloud", 0.1, 10)
