"""The runnable `Example:` blocks of the core modules run (doctest)."""
import doctest
import importlib

import pytest

MODULES = ["compress.api", "compress.criteria.base", "compress.criteria.taylor", "compress.criteria.magnitude",
           "compress.measure", "compress.data", "compress.graph", "compress.finetune.trainer"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
