"""Triton's model configuration, both ways: a load's JSON config in, the ModelConfig RPC's answer out.

In: ``parse_triton_config`` reads the JSON sent in RepositoryModelLoad ``parameters['config']``.
Out: ``describe_triton_config`` states a served version in Triton's ``inference.ModelConfig``
(what ``tritonclient``'s ``get_model_config`` and perf_analyzer read); its JSON form loads back
unchanged through ``parse_triton_config``.

Triton requires a config whenever a load carries files, so existing clients call
``load_model(name, config=json_text, files={...})``.  We honour the fields that map onto our
per-model settings and start from the model's settings in the edge config, so a field the JSON
does not state keeps its configured value:

- ``max_batch_size``                              -> ``max_batch_size``
- ``dynamic_batching.max_queue_delay_microseconds`` -> ``max_queue_delay_us``
- ``dynamic_batching.preferred_batch_size``         -> ``preferred_batch_sizes``
- ``version_policy``: ``{"latest": {"num_versions": N}}`` | ``{"all": {}}`` | ``{"specific": {"versions": [...]}}``
- ``backend`` / ``platform`` must name onnxruntime (``onnxruntime`` / ``onnxruntime_onnx``) when present
- ``name``, when present, must be the model's name
- ``escalation`` (ours, not Triton's): the joint-inference policy, the keys of the TOML table
  ``[serving.models.<name>.escalation]`` (see ``config.escalation``); ``null`` removes it

``instance_group`` and ``parameters`` are accepted and ignored; any other top-level field (Triton
has many: input, output, optimization, ...) is ignored with a debug log line.  Integers may be JSON
numbers or decimal strings (protobuf's JSON form writes 64-bit integers as strings), and field
names snake_case or protobuf's lowerCamelCase.

Everything is bounded and checked here, at load time, with the edge config's (TOML) limits: the text
(``MAX_CONFIG_CHARS``), its nesting (``MAX_JSON_DEPTH``), ``max_batch_size`` 0..65536, the queue
delay 0..10 s, preferred batch sizes 1..65536 and distinct, ``num_versions`` 1..2**32-1 (the field's
uint32 range), specific versions 1..10**18-1 (what a version directory may be named).  A value out of
range would otherwise surface later, inside the batcher or the version policy.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import replace

from edgeloop.config import ConfigError, ModelConfig, VersionPolicy
from edgeloop.config.escalation import parse_escalation
from edgeloop.config.models import MAX_BATCH_LIMIT, MAX_QUEUE_DELAY_US_LIMIT
from edgeloop.protocol import model_config_pb2 as mc
from edgeloop.protocol.errors import invalid_argument, quote
from edgeloop.serving.repository import MAX_JSON_DEPTH, MODEL_FILE, bounded_json

log = logging.getLogger("edgeloop.serving")

FIELD = "parameters['config']"
ONNX_RUNTIME_NAMES = ("onnxruntime", "onnxruntime_onnx")  # Triton's backend and platform names
_HONOURED = ("name", "backend", "platform", "max_batch_size", "dynamic_batching", "version_policy", "escalation")
_IGNORED_QUIETLY = ("instance_group", "parameters")
_DYNAMIC_BATCHING = ("max_queue_delay_microseconds", "preferred_batch_size")
#: Characters of a load's config JSON (Triton's configs are a few hundred).
MAX_CONFIG_CHARS = 65536
MAX_NUM_VERSIONS = 2**32 - 1  # ModelVersionPolicy.Latest.num_versions is a uint32
MAX_VERSION = 10**18 - 1  # version directories have at most 18 digits


def parse_triton_config(text: str, base: ModelConfig) -> ModelConfig:
    """``base`` with the fields of Triton's JSON model configuration ``text`` applied.

    Raises ProtocolError(INVALID_ARGUMENT) naming ``parameters['config']``, the field, the value
    received and what was expected.
    """
    if len(text) > MAX_CONFIG_CHARS:
        raise invalid_argument(f"{FIELD} holds {len(text)} characters; expected Triton's model configuration as "
                               f"JSON of at most {MAX_CONFIG_CHARS} characters")
    try:
        doc = _snake_case_keys(bounded_json(text))
    except ValueError as exc:
        raise invalid_argument(f"{FIELD} is not valid JSON: {exc}; expected Triton's model configuration as a "
                               f"JSON object nested at most {MAX_JSON_DEPTH} levels deep") from None
    if not isinstance(doc, dict):
        raise invalid_argument(f"{FIELD} holds a JSON {_json_type(doc)}; expected Triton's model configuration "
                               f"as a JSON object, e.g. {{\"backend\": \"onnxruntime\", \"max_batch_size\": 8}}")
    unknown = sorted(k for k in doc if k not in _HONOURED and k not in _IGNORED_QUIETLY)
    if unknown:
        log.debug("model %s: ignoring Triton config field(s) %s", base.name, ", ".join(unknown)[:500])

    name = doc.get("name")
    if name not in (None, "") and name != base.name:
        raise invalid_argument(f"{FIELD}.name is {quote(name)}; expected the model's name {base.name!r} (or no "
                               f"name)")
    for key in ("backend", "platform"):
        value = doc.get(key)
        if value not in (None, "") and value not in ONNX_RUNTIME_NAMES:
            raise invalid_argument(f"{FIELD}.{key} is {quote(value)}; expected one of "
                                   f"{', '.join(map(repr, ONNX_RUNTIME_NAMES))} (this server runs ONNX models "
                                   f"with onnxruntime only)")

    changes = {}
    if "max_batch_size" in doc:
        changes["max_batch_size"] = _int(doc["max_batch_size"], "max_batch_size", 0, MAX_BATCH_LIMIT)
    if "dynamic_batching" in doc:
        changes.update(_dynamic_batching(doc["dynamic_batching"]))
    if "version_policy" in doc:
        changes["version_policy"] = _version_policy(doc["version_policy"])
    if "escalation" in doc:
        changes["escalation"] = _escalation(doc["escalation"])
    config = replace(base, **changes)
    if config.max_batch_size > 0:
        too_big = [p for p in config.preferred_batch_sizes if p > config.max_batch_size]
        if too_big:
            raise invalid_argument(f"{FIELD}.dynamic_batching.preferred_batch_size is "
                                   f"{list(config.preferred_batch_sizes)}; expected sizes <= max_batch_size "
                                   f"{config.max_batch_size}")
    return config


#: protocol datatype names -> Triton's DataType enum (BYTES is TYPE_STRING there)
DATA_TYPES = {
    "BOOL": mc.TYPE_BOOL, "UINT8": mc.TYPE_UINT8, "UINT16": mc.TYPE_UINT16, "UINT32": mc.TYPE_UINT32,
    "UINT64": mc.TYPE_UINT64, "INT8": mc.TYPE_INT8, "INT16": mc.TYPE_INT16, "INT32": mc.TYPE_INT32,
    "INT64": mc.TYPE_INT64, "FP16": mc.TYPE_FP16, "FP32": mc.TYPE_FP32, "FP64": mc.TYPE_FP64,
    "BYTES": mc.TYPE_STRING,
}
PLATFORM, BACKEND = "onnxruntime_onnx", "onnxruntime"


def describe_triton_config(name: str, config: ModelConfig, signature) -> "mc.ModelConfig":
    """Triton's ModelConfig for a version loaded with ``config`` whose graph has ``signature``.

    As in Triton, with ``max_batch_size > 0`` the tensors' ``dims`` leave out the batch dimension;
    -1 marks a dynamic dimension.  One CPU instance: each version runs one onnxruntime session.
    """
    batched = signature.max_batch_size > 0

    def dims(spec):
        return list(spec.shape[1:] if batched else spec.shape)

    out = mc.ModelConfig(
        name=name, platform=PLATFORM, backend=BACKEND, max_batch_size=signature.max_batch_size,
        input=[mc.ModelInput(name=s.name, data_type=DATA_TYPES[s.datatype], dims=dims(s)) for s in signature.inputs],
        output=[mc.ModelOutput(name=s.name, data_type=DATA_TYPES[s.datatype], dims=dims(s))
                for s in signature.outputs],
        instance_group=[mc.ModelInstanceGroup(name=f"{name}_0", kind=mc.ModelInstanceGroup.KIND_CPU, count=1)],
        default_model_filename=MODEL_FILE)
    policy = config.version_policy
    if policy.kind == "all":
        out.version_policy.all.SetInParent()
    elif policy.kind == "specific":
        out.version_policy.specific.versions.extend(policy.versions)
    else:
        out.version_policy.latest.num_versions = policy.latest_n
    if batched:
        out.dynamic_batching.CopyFrom(mc.ModelDynamicBatching(
            preferred_batch_size=list(config.preferred_batch_sizes),
            max_queue_delay_microseconds=config.max_queue_delay_us))
    return out


def _dynamic_batching(section) -> dict:
    where = "dynamic_batching"
    if not isinstance(section, dict):
        raise invalid_argument(f"{FIELD}.{where} holds a JSON {_json_type(section)}; expected an object such as "
                               f"{{\"max_queue_delay_microseconds\": 100, \"preferred_batch_size\": [4, 8]}}")
    unknown = sorted(k for k in section if k not in _DYNAMIC_BATCHING)
    if unknown:
        log.debug("ignoring Triton config field(s) %s", ", ".join(f"{where}.{k}" for k in unknown)[:500])
    out = {}
    if "max_queue_delay_microseconds" in section:
        out["max_queue_delay_us"] = _int(section["max_queue_delay_microseconds"],
                                         f"{where}.max_queue_delay_microseconds", 0, MAX_QUEUE_DELAY_US_LIMIT)
    if "preferred_batch_size" in section:
        sizes = section["preferred_batch_size"]
        if not isinstance(sizes, list):
            raise invalid_argument(f"{FIELD}.{where}.preferred_batch_size is {_shown(sizes)}; expected a list of "
                                   f"distinct integers in 1..{MAX_BATCH_LIMIT}")
        values = [_int(v, f"{where}.preferred_batch_size[{i}]", 1, MAX_BATCH_LIMIT) for i, v in enumerate(sizes)]
        if len(set(values)) != len(values):
            raise invalid_argument(f"{FIELD}.{where}.preferred_batch_size is {_shown(sizes)}; expected distinct "
                                   f"batch sizes")
        out["preferred_batch_sizes"] = tuple(values)
    return out


def _version_policy(policy) -> VersionPolicy:
    where = "version_policy"
    expected = ('exactly one of {"latest": {"num_versions": N}}, {"all": {}}, '
                '{"specific": {"versions": [1, 2]}}')
    if not isinstance(policy, dict) or len(policy) != 1:
        raise invalid_argument(f"{FIELD}.{where} is {_shown(policy)}; expected {expected}")
    (kind, body), = policy.items()
    if kind not in ("latest", "all", "specific"):
        raise invalid_argument(f"{FIELD}.{where} has kind {quote(kind)}; expected {expected}")
    if not isinstance(body, dict):
        raise invalid_argument(f"{FIELD}.{where}.{kind} holds a JSON {_json_type(body)}; expected an object "
                               f"({expected})")
    if kind == "all":
        return VersionPolicy(kind="all")
    if kind == "latest":
        n = _int(body.get("num_versions", 1), f"{where}.latest.num_versions", 1, MAX_NUM_VERSIONS)
        return VersionPolicy(kind="latest", latest_n=n)
    versions = body.get("versions")
    if not isinstance(versions, list) or not versions:
        raise invalid_argument(f"{FIELD}.{where}.specific.versions is {_shown(versions)}; expected a "
                               f"non-empty list of positive integers (1..{MAX_VERSION})")
    return VersionPolicy(kind="specific", versions=tuple(
        sorted({_int(v, f"{where}.specific.versions[{i}]", 1, MAX_VERSION) for i, v in enumerate(versions)})))


def _escalation(section):
    """The ``escalation`` block, read by the TOML table's parser (its errors become INVALID_ARGUMENT)."""
    if section is None:
        return None
    try:
        return parse_escalation(section, FIELD, "escalation")
    except ConfigError as exc:
        raise invalid_argument(str(exc)) from None


def _snake_case_keys(value):
    """Protobuf's JSON form may spell fields in lowerCamelCase (``maxBatchSize``); Triton accepts both."""
    if isinstance(value, dict):
        return {re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), k) if isinstance(k, str) else k:
                _snake_case_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_snake_case_keys(v) for v in value]
    return value


_DECIMAL = re.compile(r"-?[0-9]{1,30}")


def _int(value, where: str, minimum: int, maximum: int) -> int:
    """A JSON number or decimal string holding an integer in ``minimum..maximum``."""
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        number = int(value)
    if number is None or not minimum <= number <= maximum:
        raise invalid_argument(f"{FIELD}.{where} is {_shown(value)}; expected an integer in {minimum}..{maximum}")
    return number


def _shown(value) -> str:
    """``value`` as JSON for a message, cut to 200 characters with its full length noted."""
    text = json.dumps(value)
    return text if len(text) <= 200 else f"{text[:200]}... ({len(text)} characters in all)"


def _json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


__all__ = ["DATA_TYPES", "FIELD", "ONNX_RUNTIME_NAMES", "describe_triton_config", "parse_triton_config"]
