"""Feature definitions: JSON round trip, a stable digest, and errors that name the field."""
from __future__ import annotations

import copy
import json

import pytest

from edgeloop.features import MAX_K, DefinitionError, FeatureDefinition, FeatureSpec
from featurekit import mixed_definition

BASE = {
    "version": 1,
    "entity": "region",
    "inputs": ["period", "nswprice", "nswdemand"],
    "features": [{"op": "label_lag", "k": 1}, {"op": "dev", "col": "nswdemand", "k": 48}, {"op": "since_last"}],
    "forbidden": ["nswprice"],
}


def with_(path, value):
    """BASE with one field replaced (path like ("features", 1, "k")); value DELETE removes it."""
    doc = copy.deepcopy(BASE)
    target = doc
    for step in path[:-1]:
        target = target[step]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


DELETE = object()


def test_round_trip_and_normal_form():
    d = FeatureDefinition.from_dict(BASE)
    assert d.output_names == ("period", "nswprice", "nswdemand", "label_lag_1", "dev_nswdemand_48", "since_last")
    assert d.width == 6
    again = FeatureDefinition.from_json(d.to_json())
    assert again == d and again.digest == d.digest
    assert json.loads(d.to_json())["features"][0] == {"op": "label_lag", "name": "label_lag_1", "k": 1}


def test_digest_is_canonical_and_changes_with_meaning():
    d = FeatureDefinition.from_dict(BASE)
    shuffled = json.dumps(dict(reversed(list(BASE.items()))), indent=3)
    assert FeatureDefinition.from_json(shuffled).digest == d.digest
    named = with_(("features", 0, "name"), "label_lag_1")  # the default name, written out
    assert FeatureDefinition.from_dict(named).digest == d.digest
    assert FeatureDefinition.from_dict(with_(("features", 1, "k"), 47)).digest != d.digest
    assert len(d.digest) == 64 and int(d.digest, 16) >= 0
    # pinned: the digest goes into lineage, so its recipe must not change silently
    assert d.to_json() == (
        '{"entity":"region","features":[{"k":1,"name":"label_lag_1","op":"label_lag"},{"col":"nswdemand","k":48,'
        '"name":"dev_nswdemand_48","op":"dev"},{"name":"since_last","op":"since_last"}],"forbidden":["nswprice"],'
        '"inputs":["period","nswprice","nswdemand"],"version":1}')
    assert d.digest == "bf0736c24b58e0a7af18645637e601a8eb82bec249ad7d9842fe3ea7cd67adc4"


def test_constructor_validates_like_from_dict():
    d = FeatureDefinition(entity="k", inputs=("a", "b"), features=(FeatureSpec(op="lag", name="lag_a_2", col="a", k=2),))
    assert d == FeatureDefinition.from_dict(d.to_dict())
    with pytest.raises(DefinitionError) as info:
        FeatureDefinition(entity="k", inputs=("a",), features=(FeatureSpec(op="lag", name="x", col="zz", k=2),))
    assert info.value.field == "features[0].col"


@pytest.mark.parametrize("path, value, field, hint", [
    (("version",), 2, "version", "1"),
    (("entity",), DELETE, "entity", "routing key"),
    (("entity",), "has space", "entity", "a name"),
    (("inputs",), [], "inputs", "1..256"),
    (("inputs",), ["a", "a"], "inputs[1]", "once"),
    (("inputs",), "period", "inputs", "a list"),
    (("features", 0, "op"), "median", "features[0].op", "lag"),
    (("features", 1, "col"), "vicdemand", "features[1].col", "raw inputs"),
    (("features", 1, "col"), "nswprice", "features[1].col", "forbidden"),
    (("features", 1, "col"), DELETE, "features[1].col", "raw input name"),
    (("features", 0, "col"), "nswdemand", "features[0].col", "no 'col'"),
    (("features", 1, "k"), 0, "features[1].k", f"1..{MAX_K}"),
    (("features", 1, "k"), MAX_K + 1, "features[1].k", f"1..{MAX_K}"),
    (("features", 1, "k"), 2.0, "features[1].k", "integer"),
    (("features", 1, "k"), True, "features[1].k", "integer"),
    (("features", 0, "k"), DELETE, "features[0].k", "integer"),
    (("features", 2, "k"), 3, "features[2].k", "no 'k'"),
    (("features", 0, "default"), "zero", "features[0].default", "finite"),
    (("features", 0, "name"), "period", "features[0].name", "not used"),
    (("features", 0, "weight"), 1, "features[0].weight", "one of the keys"),
    (("features",), {"op": "lag"}, "features", "a list"),
    (("forbidden",), ["nswprise"], "forbidden[0]", "raw inputs"),
    (("labels",), [], "labels", "one of the keys"),
])
def test_errors_name_the_field(path, value, field, hint):
    with pytest.raises(DefinitionError) as info:
        FeatureDefinition.from_dict(with_(path, value))
    assert info.value.field == field
    assert hint in info.value.expected
    assert f"field '{field}'" in str(info.value)


def test_duplicate_feature_names_and_too_many_features():
    doc = with_(("features",), [{"op": "label_lag", "k": 1}, {"op": "label_lag", "k": 1}])
    with pytest.raises(DefinitionError) as info:
        FeatureDefinition.from_dict(doc)
    assert info.value.field == "features[1].name"
    doc = with_(("features",), [{"op": "label_lag", "k": 1, "name": f"f{i}"} for i in range(257)])
    with pytest.raises(DefinitionError) as info:
        FeatureDefinition.from_dict(doc)
    assert info.value.field == "features"


@pytest.mark.parametrize("text, hint", [
    ("{not json", "valid JSON"),
    ('{"version": 1, "entity": "k", "inputs": ["a"], "features": [{"op": "lag", "col": "a", "k": 1, "default": NaN}]}',
     "valid JSON"),
    ("[1, 2]", "a JSON object"),
    (" " * (1 << 20) + "{}", "at most"),
])
def test_bad_documents(text, hint):
    with pytest.raises(DefinitionError) as info:
        FeatureDefinition.from_json(text)
    assert hint in info.value.expected


def test_long_values_are_cut_in_messages():
    with pytest.raises(DefinitionError) as info:
        FeatureDefinition.from_dict(with_(("entity",), "x" * 5000))
    assert len(str(info.value)) < 400


def test_elec2_trap_is_enforced_by_forbidden():
    """On Elec2 the label is computed from nswprice's history: any derived feature over it is refused."""
    for op in ("lag", "delta", "mean", "std", "dev"):
        doc = with_(("features",), [{"op": op, "col": "nswprice", "k": 48}])
        with pytest.raises(DefinitionError, match="forbid"):
            FeatureDefinition.from_dict(doc)
    assert mixed_definition().forbidden == ("price",)
