"""A model's feature definition: declared once, read by the edge (serving) and the cloud (training).

It travels as JSON in the model's manifest and registry entry (never pickle), so it is validated
on load like any untrusted input, and its ``digest`` (sha256 of the canonical JSON) goes into
lineage.  Example::

    {"version": 1, "entity": "region",
     "inputs": ["period", "nswprice", "nswdemand"],
     "features": [{"op": "label_lag", "k": 1}, {"op": "dev", "col": "nswdemand", "k": 48},
                  {"op": "since_last"}],
     "forbidden": ["nswprice"]}

The model's input vector is the raw inputs, in order, then the derived features, in order.
Derived features run over the stream of the request's *entity* (its routing key):

* ``lag(col, k)``: col's value k rows back; ``delta(col, k)``: current value minus lag(col, k)
* ``mean(col, k)``, ``std(col, k)`` (population): over the previous k rows (not the current one)
* ``dev(col, k)``: current value minus mean(col, k)
* ``since_last``: seconds since the entity's previous row (never negative)
* ``label_lag(k)``, ``label_mean(k)``: over the entity's labels for events *before* the request

``online`` (optional) declares the entity's *online head* (``edgeloop.features.online``): a small
softmax correction of the model's output, learned per entity from its late labels on the owner node,
``{"lr": 0.05, "classes": [0, 1], "pending": 16}``.  It is not an input of the model (the model's
vector stays raw inputs + derived features); the edge applies it to the model's ``probabilities``
and ``label`` outputs (output names configurable) between two models the CT loop publishes.

Cold and partial state (documented defaults): with fewer than k values the window shrinks to
the values there are (``lag`` takes the oldest one) and the vector is flagged *partial*; with no
value at all the feature's ``default`` is used when declared, else the current value for
``lag``/``mean`` and 0 for the others.  ``forbidden`` names raw inputs that no derived feature
may read (on Elec2, ``nswprice``: its history recomputes the label).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import DefinitionError

FORMAT_VERSION = 1
MAX_K = 1024  # longest window: bounds each entity's ring buffers
MAX_INPUTS = 256
MAX_FEATURES = 256
MAX_JSON_BYTES = 1 << 20
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
NAME_EXPECTED = "a name of 1-64 characters: a letter or _, then letters, digits, _ . -"

COLUMN_OPS = ("lag", "delta", "mean", "std", "dev")
LABEL_OPS = ("label_lag", "label_mean")
OPS = COLUMN_OPS + ("since_last",) + LABEL_OPS

_TOP_KEYS = ("version", "entity", "inputs", "features", "forbidden", "online")
_ONLINE_KEYS = ("lr", "l2", "classes", "pending", "probabilities", "label")
MAX_CLASSES = 64
MAX_PENDING = 256
_FEATURE_KEYS = ("op", "col", "k", "name", "default")


@dataclass(frozen=True)
class FeatureSpec:
    """One derived feature: ``op`` over column ``col`` (column ops only) with window ``k``."""

    op: str
    name: str
    col: str | None = None
    k: int | None = None
    default: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "name": self.name}
        if self.col is not None:
            out["col"] = self.col
        if self.k is not None:
            out["k"] = self.k
        if self.default is not None:
            out["default"] = self.default
        return out


def default_name(op: str, col: str | None, k: int | None) -> str:
    """The name a feature gets when none is declared: ``lag_nswdemand_1``, ``label_mean_6``, ``since_last``."""
    return "_".join(str(p) for p in (op, col, k) if p is not None)


@dataclass(frozen=True)
class OnlineSpec:
    """The online head: SGD step ``lr`` (and L2 ``l2``) per late label, over ``classes`` (label values in
    the order of the model's probability columns); ``pending`` served rows per entity wait for their labels."""

    lr: float
    classes: tuple[float, ...]
    pending: int = 16
    l2: float = 0.0
    probabilities: str = "probabilities"
    label: str = "label"

    def to_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "l2": self.l2, "classes": list(self.classes), "pending": self.pending,
                "probabilities": self.probabilities, "label": self.label}


@dataclass(frozen=True)
class FeatureDefinition:
    """A validated definition; build it with ``from_dict``/``from_json`` (or the constructor, which checks too)."""

    entity: str
    inputs: tuple[str, ...]
    features: tuple[FeatureSpec, ...] = ()
    forbidden: tuple[str, ...] = ()
    version: int = FORMAT_VERSION
    online: OnlineSpec | None = None

    def __post_init__(self) -> None:
        # the constructor and from_dict share one validator: round-trip through the dict form
        checked = _parse(self.to_dict())
        for attr in ("entity", "inputs", "features", "forbidden", "version", "online"):
            object.__setattr__(self, attr, getattr(checked, attr))

    # -- forms ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The normalised JSON form (every feature named); ``from_dict`` reads it back unchanged."""
        return {
            "version": self.version,
            "entity": self.entity,
            "inputs": list(self.inputs),
            "features": [f.to_dict() if isinstance(f, FeatureSpec) else f for f in self.features],
            "forbidden": list(self.forbidden),
            **({"online": self.online.to_dict() if isinstance(self.online, OnlineSpec) else self.online}
               if self.online is not None else {}),
        }

    def without_online(self) -> "FeatureDefinition":
        """The same features without the online head (the model's vector is unchanged)."""
        doc = self.to_dict()
        doc.pop("online", None)
        return _parse(doc)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): the bytes the digest is taken over."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False)

    @property
    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON: the definition's identity in lineage and in exported state."""
        return hashlib.sha256(self.to_json().encode("ascii")).hexdigest()

    @classmethod
    def from_dict(cls, obj: Any) -> "FeatureDefinition":
        """Validate a parsed JSON object; raises ``DefinitionError`` naming the field."""
        return _parse(obj)

    @classmethod
    def from_json(cls, text: str | bytes) -> "FeatureDefinition":
        """Parse and validate JSON text (at most 1 MiB; NaN/Infinity are refused)."""
        if not isinstance(text, (str, bytes, bytearray)):
            raise DefinitionError("(document)", type(text).__name__, "JSON text (str or bytes)")
        if len(text) > MAX_JSON_BYTES:
            raise DefinitionError("(document)", f"{len(text)} bytes", f"at most {MAX_JSON_BYTES} bytes of JSON")
        try:
            obj = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DefinitionError("(document)", str(exc), "valid JSON") from None
        return _parse(obj)

    # -- shape ------------------------------------------------------------------------------------------
    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the model's input vector: raw inputs, then derived features."""
        return self.inputs + tuple(f.name for f in self.features)

    @property
    def width(self) -> int:
        """Length of the vector the model sees."""
        return len(self.inputs) + len(self.features)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _name(field: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise DefinitionError(field, value, NAME_EXPECTED)
    return value


def _names(field: str, value: Any, limit: int, minimum: int) -> tuple[str, ...]:
    if not isinstance(value, list) or not (minimum <= len(value) <= limit):
        shown = f"a list of {len(value)}" if isinstance(value, list) else value
        raise DefinitionError(field, shown, f"a list of {minimum}..{limit} names")
    seen: set[str] = set()
    for i, item in enumerate(value):
        _name(f"{field}[{i}]", item)
        if item in seen:
            raise DefinitionError(f"{field}[{i}]", item, "names that appear once")
        seen.add(item)
    return tuple(value)


def _keys(field: str, obj: Any, known: tuple[str, ...], kind: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DefinitionError(field, obj, f"a JSON object ({kind})")
    for key in obj:
        if key not in known:
            where = f"{field}.{key}" if field != "(document)" else str(key)
            raise DefinitionError(where, obj[key], f"one of the keys {', '.join(known)}")
    return obj


def _feature(field: str, obj: Any, inputs: tuple[str, ...], forbidden: tuple[str, ...]) -> FeatureSpec:
    _keys(field, obj, _FEATURE_KEYS, "a derived feature")
    op = obj.get("op")
    if op not in OPS:
        raise DefinitionError(f"{field}.op", op, f"one of {', '.join(OPS)}")
    col = obj.get("col")
    if op in COLUMN_OPS:
        if "col" not in obj:
            raise DefinitionError(f"{field}.col", None, f"a raw input name for {op} (one of {', '.join(inputs)})")
        if col not in inputs:
            raise DefinitionError(f"{field}.col", col, f"one of the raw inputs: {', '.join(inputs)}")
        if col in forbidden:
            raise DefinitionError(f"{field}.col", col,
                                  "a column not listed in 'forbidden' (the definition forbids features over it)")
    elif "col" in obj:
        raise DefinitionError(f"{field}.col", col, f"no 'col' for {op} (it reads no raw input)")
    k = obj.get("k")
    if op == "since_last":
        if "k" in obj:
            raise DefinitionError(f"{field}.k", k, "no 'k' for since_last")
    elif not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise DefinitionError(f"{field}.k", k, f"an integer in 1..{MAX_K}")
    default = obj.get("default")
    if default is not None:
        if not isinstance(default, (int, float)) or isinstance(default, bool) or not math.isfinite(default):
            raise DefinitionError(f"{field}.default", default, "a finite number")
        default = float(default)
    name = obj["name"] if "name" in obj else default_name(op, col, k)
    _name(f"{field}.name", name)
    return FeatureSpec(op=op, name=name, col=col, k=k, default=default)


def _number(field: str, value: Any, low: float, high: float, low_open: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (low < value <= high if low_open else low <= value <= high):
        raise DefinitionError(field, value, f"a number in {'(' if low_open else '['}{low:g}, {high:g}]")
    return float(value)


def _online(obj: Any) -> OnlineSpec:
    _keys("online", obj, _ONLINE_KEYS, "the online head")
    if "lr" not in obj:
        raise DefinitionError("online.lr", None, "the head's SGD step, a number in (0, 1]")
    lr = _number("online.lr", obj["lr"], 0.0, 1.0, True)
    l2 = _number("online.l2", obj.get("l2", 0.0), 0.0, 1.0, False)
    classes = obj.get("classes")
    if not isinstance(classes, list) or not 2 <= len(classes) <= MAX_CLASSES:
        shown = f"a list of {len(classes)}" if isinstance(classes, list) else classes
        raise DefinitionError("online.classes", shown, f"a list of 2..{MAX_CLASSES} label values (the model's "
                              f"probability columns, in order)")
    values = [_number(f"online.classes[{i}]", c, -2.0**53, 2.0**53, False) for i, c in enumerate(classes)]
    if len(set(values)) != len(values):
        raise DefinitionError("online.classes", classes[:20], "distinct label values")
    pending = obj.get("pending", 16)
    if not isinstance(pending, int) or isinstance(pending, bool) or not 1 <= pending <= MAX_PENDING:
        raise DefinitionError("online.pending", pending, f"an integer in 1..{MAX_PENDING} (served rows per entity "
                              f"waiting for their labels)")
    names = {key: _name(f"online.{key}", obj.get(key, key)) for key in ("probabilities", "label")}
    return OnlineSpec(lr=lr, classes=tuple(values), pending=pending, l2=l2, **names)


def _parse(obj: Any) -> FeatureDefinition:
    _keys("(document)", obj, _TOP_KEYS, "a feature definition")
    version = obj.get("version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise DefinitionError("version", version, f"{FORMAT_VERSION}")
    if "entity" not in obj:
        raise DefinitionError("entity", None, "the name of the entity (the routing key)")
    entity = _name("entity", obj["entity"])
    if "inputs" not in obj:
        raise DefinitionError("inputs", None, "the list of raw input names")
    inputs = _names("inputs", obj["inputs"], MAX_INPUTS, 1)
    forbidden = _names("forbidden", obj.get("forbidden", []), MAX_INPUTS, 0)
    for i, name in enumerate(forbidden):
        if name not in inputs:
            raise DefinitionError(f"forbidden[{i}]", name, f"one of the raw inputs: {', '.join(inputs)}")
    raw_features = obj.get("features", [])
    if not isinstance(raw_features, list) or len(raw_features) > MAX_FEATURES:
        shown = f"a list of {len(raw_features)}" if isinstance(raw_features, list) else raw_features
        raise DefinitionError("features", shown, f"a list of at most {MAX_FEATURES} derived features")
    features = []
    taken = set(inputs)
    for i, item in enumerate(raw_features):
        spec = _feature(f"features[{i}]", item, inputs, forbidden)
        if spec.name in taken:
            raise DefinitionError(f"features[{i}].name", spec.name, "a name not used by another input or feature")
        taken.add(spec.name)
        features.append(spec)
    online = _online(obj["online"]) if "online" in obj else None
    definition = object.__new__(FeatureDefinition)
    for attr, value in (("entity", entity), ("inputs", inputs), ("features", tuple(features)),
                        ("forbidden", forbidden), ("version", version), ("online", online)):
        object.__setattr__(definition, attr, value)
    return definition
