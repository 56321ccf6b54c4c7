"""The package's lazy public names resolve to the tools, in any import order."""

import subprocess
import sys

import pytest

import dlsummary


@pytest.mark.parametrize("name", sorted(set(dlsummary.__all__) - {"__version__"}))
def test_every_public_name_resolves(name):
    value = getattr(dlsummary, name)
    assert callable(value), f"dlsummary.{name} is {value!r}"
    assert not isinstance(value, type(dlsummary)), f"dlsummary.{name} is a module"


def test_function_named_like_its_module_is_not_shadowed():
    # a fresh interpreter: import another name of the module first
    code = ("from dlsummary import empirical_receptive_field, receptive_field; "
            "import dlsummary, types; "
            "assert not isinstance(dlsummary.receptive_field, types.ModuleType); "
            "assert not isinstance(receptive_field, types.ModuleType)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dlsummary.nope  # noqa: B018
