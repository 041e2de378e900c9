"""The ``>>>`` examples in the docstrings of the public entry points run and give what they show."""
import doctest

import pytest

import dynarec.config
import dynarec.models.registry


@pytest.mark.parametrize("module", [dynarec.models.registry, dynarec.config], ids=lambda m: m.__name__)
def test_docstring_examples_hold(module):
    res = doctest.testmod(module)
    assert res.attempted > 0 and res.failed == 0
