"""The ``escalation`` table of a model (joint inference): a target and a rule on the local output.

One parser for both the TOML table ``[serving.models.<name>.escalation]`` and the ``escalation``
block of a Triton-style load config (JSON), so both refuse the same values with the same words.
"""

from __future__ import annotations

from typing import Any

from .fields import TableReader
from .network import ADDRESS_EXPECTATION, split_address
from .schema import ESCALATION_RULES, EscalationPolicy

ESCALATION_KEYS = ("target_model", "target_version", "target_zone", "target_address", "output", "rule", "threshold",
                   "low", "high", "budget_ms", "max_share", "max_burst")
MAX_BUDGET_MS = 60_000
MAX_BURST = 65536
_NAME = "a model name of 1..128 characters: letters, digits, '_', '-' or '.', not starting with '.' or '-'"
_OUTPUT = "the name of an output tensor of the model (1..256 characters) holding the rule's values"
_THRESHOLDS = {
    "top1": (0.0, 1.0, "a number in 0..1: rows whose highest probability is below it escalate"),
    "margin": (0.0, 1.0, "a number in 0..1: rows whose top two probabilities are closer than it escalate"),
    "entropy": (0.0, None, "a number >= 0 (nats): rows whose entropy is above it escalate"),
}


def parse_escalation(table: dict[str, Any], source: str, prefix: str) -> EscalationPolicy:
    """An EscalationPolicy from ``table``; ConfigError naming the key, value and expectation otherwise."""
    from .models import is_model_name  # late: models imports this module

    if not isinstance(table, dict):
        from .errors import ConfigError

        raise ConfigError.for_value(source, prefix, table, f"a table [{prefix}] with target_model, output and rule")
    fields = TableReader(table, source, prefix, ESCALATION_KEYS)
    target = fields.string("target_model", expected=_NAME)
    if not is_model_name(target):
        raise fields.error("target_model", target, _NAME)
    version = fields.integer("target_version", None, minimum=1,
                             expected="an integer version >= 1 (omit for the latest)")
    zone = fields.string("target_zone", None, expected="a non-empty zone name (node.zone of the nodes serving it)")
    address = fields.string("target_address", None, expected=ADDRESS_EXPECTATION)
    if address is not None and split_address(address) is None:
        raise fields.error("target_address", address, ADDRESS_EXPECTATION)
    if (zone is None) == (address is None):
        raise fields.error("target_zone" if zone is not None else "target_address", zone or address,
                           "exactly one of target_zone (a mesh zone) and target_address ('host:port')")
    output = fields.string("output", expected=_OUTPUT)
    if len(output) > 256:
        raise fields.error("output", output, _OUTPUT)
    rule = fields.string("rule", expected=f"one of {', '.join(ESCALATION_RULES)}")
    if rule not in ESCALATION_RULES:
        raise fields.error("rule", rule, f"one of {', '.join(ESCALATION_RULES)}")
    threshold, low, high = 0.0, None, None
    if rule == "range":
        for name in ("threshold",):
            if fields.has(name):
                raise fields.error(name, table[name], "no threshold with rule 'range' (it uses low and high)")
        low = fields.number("low", None, expected="a finite number: values below it escalate")
        high = fields.number("high", None, expected="a finite number: values above it escalate")
        if low is None and high is None:
            raise fields.error("low", None, "low, high or both with rule 'range'")
        if low is not None and high is not None and low > high:
            raise fields.error("high", high, f"a number >= low ({low})")
    else:
        minimum, maximum, expected = _THRESHOLDS[rule]
        threshold = fields.number("threshold", expected=expected, minimum=minimum)
        if maximum is not None and threshold > maximum:
            raise fields.error("threshold", threshold, expected)
        for name in ("low", "high"):
            if fields.has(name):
                raise fields.error(name, table[name], f"no {name} with rule {rule!r} (it uses threshold)")
    budget = fields.integer("budget_ms", 200, minimum=1, maximum=MAX_BUDGET_MS,
                            expected=f"an integer in 1..{MAX_BUDGET_MS} (ms an escalation may take)")
    share = fields.number("max_share", None, exclusive_minimum=0.0,
                          expected="a number in (0, 1]: the most escalated rows per row evaluated")
    if share is not None and share > 1.0:
        raise fields.error("max_share", share, "a number in (0, 1]: the most escalated rows per row evaluated")
    burst = fields.integer("max_burst", 10, minimum=1, maximum=MAX_BURST,
                           expected=f"an integer in 1..{MAX_BURST} (rows that may escalate at once)")
    return EscalationPolicy(target_model=target, output=output, rule=rule, threshold=threshold, low=low, high=high,
                            target_zone=zone, target_address=address, target_version=version, budget_ms=budget,
                            max_share=share, max_burst=burst)


__all__ = ["ESCALATION_KEYS", "parse_escalation"]
