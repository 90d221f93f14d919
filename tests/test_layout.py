"""The package layout others build on: `compress.graph` re-exports its names, and the
callable `compress.finetune` no longer shadows its subpackage."""
import importlib
import inspect
import subprocess
import sys

import compress


def test_graph_package_keeps_its_names():
    from compress import graph

    for name in ("GraphBuildError", "AttentionSpec", "register_attention", "recognize", "build", "PruningGraph",
                 "UnitGroup", "run_model", "time_limit", "describe_sizes", "release_memory", "swap_torch_mha",
                 "MultiheadAttention", "HEAD_ATTRS", "INNER_ATTRS", "head_count", "infer_protected",
                 "module_trail", "_first_tensor", "_module_names"):
        assert hasattr(graph, name), name
    # `build` is the function, not a submodule of the same name
    assert inspect.isfunction(graph.build) and graph.build.__name__ == "build"
    assert issubclass(graph.GraphBuildError, RuntimeError)


def test_finetune_submodules_import_and_the_name_stays_callable():
    # a fresh interpreter: `import compress.finetune.trainer` failed there before
    code = ("import compress.finetune.trainer, compress, inspect; "
            "assert compress.finetune.trainer.FinetuneConfig is compress.finetune.FinetuneConfig; "
            "assert callable(compress.finetune); "
            "assert 'train' in inspect.signature(compress.finetune).parameters")
    subprocess.run([sys.executable, "-c", code], check=True)
    mod = importlib.import_module("compress.finetune")
    assert compress.finetune is mod
    assert "patience" in inspect.signature(compress.finetune).parameters


def test_calling_compress_finetune_runs_the_function():
    import torch

    model = torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.Linear(8, 4), torch.nn.Unflatten(1, (4, 1)))
    data = [(torch.randn(4, 8, 1), torch.randn(4, 4, 1)) for _ in range(2)]
    tuned = compress.finetune(model, data, data, epochs=1, progress=False)
    assert tuned is not model and isinstance(tuned, torch.nn.Module)
    assert not torch.equal(tuned[1].weight, model[1].weight)
