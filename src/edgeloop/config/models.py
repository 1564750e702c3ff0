"""Per-model settings: ``[serving.model_defaults]`` and ``[serving.models.<name>]`` tables.

A model table starts from the defaults and overrides only the keys it sets, so cross-field checks
(preferred batch sizes within the max batch size) run on the merged result and blame the key that broke them.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from .errors import ConfigError
from .escalation import parse_escalation
from .fields import TableReader, is_integer, join_key, unknown_key_error
from .schema import GRAPH_OPTIMIZATION_LEVELS, ModelConfig, VersionPolicy

MODEL_KEYS = (
    "version_policy", "max_batch_size", "max_queue_delay_us", "preferred_batch_sizes", "intra_op_threads",
    "inter_op_threads", "graph_optimization_level", "execution_providers", "max_queue_size", "sample_rate", "escalation",
    "feature_max_entities", "feature_max_history",
)
MAX_FEATURE_ENTITIES = 100_000_000
MAX_FEATURE_HISTORY = 1024  # the feature store's longest window (``features.MAX_K``)
MAX_BATCH_LIMIT = 65536
MAX_QUEUE_DELAY_US_LIMIT = 10_000_000
MAX_QUEUE_SIZE_LIMIT = 65536
MAX_THREADS = 1024
MODEL_NAME_EXPECTATION = ("a model name of 1..128 characters: letters, digits, '_', '-' or '.', "
                          "not starting with '.' or '-'")
VERSION_POLICY_EXPECTATION = ("\"all\", \"latest\", { latest = N } with N >= 1, "
                              "or { specific = [V, ...] } with distinct versions >= 1")
PROVIDER_EXPECTATION = ("a non-empty array of distinct onnxruntime provider names such as "
                        "[\"CPUExecutionProvider\"] (each 'XxxExecutionProvider')")

SAMPLE_RATE_EXPECTATION = ("a number in 0..1: the share of requests recorded to the sample outbox "
                           "(default 1.0 with a coordinator, 0 without)")

_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # the serving repository's rule, matched whole
_PROVIDER = re.compile(r"^[A-Z][A-Za-z0-9]*ExecutionProvider$")


def is_model_name(name: str) -> bool:
    """True for names usable as a directory in the model repository."""
    return bool(_MODEL_NAME.fullmatch(name))


def parse_model_table(table: dict[str, Any], source: str, prefix: str, base: ModelConfig) -> ModelConfig:
    """``base`` with the keys of ``table`` applied and checked."""
    fields = TableReader(table, source, prefix, MODEL_KEYS)
    policy = base.version_policy
    if fields.has("version_policy"):
        policy = parse_version_policy(table["version_policy"], source, fields.key("version_policy"))
    max_batch = fields.integer("max_batch_size", base.max_batch_size, minimum=0, maximum=MAX_BATCH_LIMIT,
                               expected=f"an integer in 0..{MAX_BATCH_LIMIT} (0 disables batching)")
    delay = fields.integer("max_queue_delay_us", base.max_queue_delay_us, minimum=0,
                           maximum=MAX_QUEUE_DELAY_US_LIMIT)
    queue = fields.integer("max_queue_size", base.max_queue_size, minimum=1, maximum=MAX_QUEUE_SIZE_LIMIT,
                           expected=f"an integer in 1..{MAX_QUEUE_SIZE_LIMIT} (requests waiting for a batch)")
    preferred = base.preferred_batch_sizes
    if fields.has("preferred_batch_sizes"):
        preferred = _batch_sizes(fields, table["preferred_batch_sizes"])
    threads_expected = f"a positive integer thread count in 1..{MAX_THREADS}"
    intra = fields.integer("intra_op_threads", base.intra_op_threads, minimum=1, maximum=MAX_THREADS,
                           expected=threads_expected)
    inter = fields.integer("inter_op_threads", base.inter_op_threads, minimum=1, maximum=MAX_THREADS,
                           expected=threads_expected)
    level = fields.string("graph_optimization_level", base.graph_optimization_level,
                          expected=f"one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}")
    if level not in GRAPH_OPTIMIZATION_LEVELS:
        raise fields.error("graph_optimization_level", level, f"one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}")
    providers = base.execution_providers
    if fields.has("execution_providers"):
        providers = _providers(fields, table["execution_providers"])
    _check_preferred_fit(fields, preferred, max_batch)
    sample_rate = fields.number("sample_rate", base.sample_rate, minimum=0.0, expected=SAMPLE_RATE_EXPECTATION)
    if sample_rate is not None and sample_rate > 1.0:
        raise fields.error("sample_rate", sample_rate, SAMPLE_RATE_EXPECTATION)
    escalation = base.escalation
    if fields.has("escalation"):
        escalation = parse_escalation(table["escalation"], source, fields.key("escalation"))
    max_entities = fields.integer("feature_max_entities", base.feature_max_entities, minimum=1,
                                  maximum=MAX_FEATURE_ENTITIES,
                                  expected=f"an integer in 1..{MAX_FEATURE_ENTITIES} (entities whose real-time "
                                           f"feature state is kept in memory)")
    max_history = fields.integer("feature_max_history", base.feature_max_history, minimum=1,
                                 maximum=MAX_FEATURE_HISTORY,
                                 expected=f"an integer in 1..{MAX_FEATURE_HISTORY} (longest feature window, rows)")
    return replace(base, feature_max_entities=max_entities, feature_max_history=max_history, version_policy=policy, max_batch_size=max_batch, max_queue_delay_us=delay,
                   max_queue_size=queue,
                   preferred_batch_sizes=preferred, intra_op_threads=intra, inter_op_threads=inter,
                   graph_optimization_level=level, execution_providers=providers, sample_rate=sample_rate,
                   escalation=escalation)


def parse_models(table: dict[str, Any], source: str, prefix: str, defaults: ModelConfig) -> tuple[ModelConfig, ...]:
    """Every ``[serving.models.<name>]`` table, sorted by name."""
    models = []
    for name in sorted(table):
        key = join_key(prefix, name)
        if not is_model_name(name) or name in (".", ".."):
            raise ConfigError.for_value(source, key, name, MODEL_NAME_EXPECTATION)
        value = table[name]
        if not isinstance(value, dict):
            raise ConfigError.for_value(source, key, value, f"a table [{key}] of model settings")
        models.append(parse_model_table(value, source, key, replace(defaults, name=name)))
    return tuple(models)


def parse_version_policy(value: Any, source: str, key: str) -> VersionPolicy:
    """``"all"``, ``"latest"``, ``{latest = N}`` or ``{specific = [...]}`` as a VersionPolicy."""
    if value == "all":
        return VersionPolicy(kind="all", latest_n=0)
    if value == "latest":
        return VersionPolicy(kind="latest", latest_n=1)
    if not isinstance(value, dict) or len(value) != 1:
        raise ConfigError.for_value(source, key, value, VERSION_POLICY_EXPECTATION)
    (kind, arg), = value.items()
    if kind == "latest":
        if not is_integer(arg) or arg < 1:
            raise ConfigError.for_value(source, f"{key}.latest", arg, "an integer >= 1 (how many newest versions)")
        return VersionPolicy(kind="latest", latest_n=arg)
    if kind == "specific":
        expected = "a non-empty array of distinct integer versions >= 1"
        if (not isinstance(arg, list) or not arg or not all(is_integer(v) and v >= 1 for v in arg)
                or len(set(arg)) != len(arg)):
            raise ConfigError.for_value(source, f"{key}.specific", arg, expected)
        return VersionPolicy(kind="specific", latest_n=0, versions=tuple(sorted(arg)))
    raise unknown_key_error(source, key, kind, arg, ("latest", "specific"))


def _batch_sizes(fields: TableReader, value: Any) -> tuple[int, ...]:
    expected = "an array of distinct integers >= 1, each <= max_batch_size"
    if not isinstance(value, list) or not all(is_integer(v) and v >= 1 for v in value) or len(set(value)) != len(value):
        raise fields.error("preferred_batch_sizes", value, expected)
    return tuple(sorted(value))


def _providers(fields: TableReader, value: Any) -> tuple[str, ...]:
    if (not isinstance(value, list) or not value or len(set(map(repr, value))) != len(value)
            or not all(isinstance(v, str) and _PROVIDER.match(v) for v in value)):
        raise fields.error("execution_providers", value, PROVIDER_EXPECTATION)
    return tuple(value)


def _check_preferred_fit(fields: TableReader, preferred: tuple[int, ...], max_batch: int) -> None:
    too_big = [size for size in preferred if size > max_batch]
    if not too_big:
        return
    if fields.has("preferred_batch_sizes") or not fields.has("max_batch_size"):
        raise fields.error("preferred_batch_sizes", list(preferred),
                           f"batch sizes <= max_batch_size ({max_batch}); {too_big} exceed it")
    raise fields.error("max_batch_size", max_batch,
                       f"a value >= every preferred batch size (largest is {max(preferred)})")
