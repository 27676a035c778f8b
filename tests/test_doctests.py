"""The ``>>>`` examples in the public docstrings run and print what they say."""

import doctest

import pytest

import jconv.conv
import jconv.linen
import jconv.nnx

pytestmark = pytest.mark.device


@pytest.mark.parametrize("module", [jconv.conv, jconv.linen, jconv.nnx], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{module.__name__} has no >>> example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {module.__name__} failed"
