"""The runnable `Example:` blocks of the core modules run (doctest)."""
import doctest
import importlib

import pytest

MODULES = ["compress.api", "compress.criteria.base", "compress.criteria.taylor", "compress.criteria.magnitude",
           "compress.measure", "compress.sparse", "compress.strategies.base", "compress.data", "compress.data.windows", "compress.data.loaders",
           "compress.data.generate", "compress.data.timestamps", "compress.graph", "compress.graph.attention", "compress.graph.mha",
           "compress.graph.builder", "compress.graph.kinds", "compress.graph.masks", "compress.models.base", "compress.finetune", "compress.finetune.trainer"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    # the data submodules' examples use the package's public names (synthetic, from_array)
    extra = {}
    if name.startswith("compress.data."):
        package = importlib.import_module("compress.data")
        extra = {k: getattr(package, k) for k in package.__all__}
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, extraglobs=extra)
    if name.startswith("compress.data"):
        assert result.attempted > 0, f"{name}: its examples were not collected"
    assert result.failed == 0
