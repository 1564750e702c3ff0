"""The compiled core is required: a missing extension says how to build it, and the built ones load."""
import pytest

from edgeloop._native import load


@pytest.mark.parametrize("name", ["_linalg", "_stats", "_placement", "_features"])
def test_every_native_module_is_built(name):
    module = load(name)
    assert module.__file__.endswith((".so", ".pyd")), f"{name} is not a compiled extension: {module.__file__}"


def test_missing_extension_error_says_how_to_build():
    with pytest.raises(ImportError, match=r"pip install \."):
        load("_not_built_anywhere")
