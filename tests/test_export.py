"""ONNX export (`compress.export_onnx`) and `compress.measure(..., backend="onnxruntime")`."""
import pytest
import torch

import compress
from compress.sparse import SparseLinear

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = compress.models.load("transformer", size="tiny").eval()
    return model, torch.randn(2, model.context_length, model.n_channels)


def _run_onnx(path, x):
    sess = compress.export.onnx_session(path)
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def test_when_a_structured_pruned_model_is_exported_then_onnx_runtime_gives_its_outputs(tmp_path):
    model, x = _tiny()
    small = compress.prune(model, "magnitude", 0.5, example_inputs=x)
    path = compress.export_onnx(small, x, str(tmp_path / "small.onnx"), exporter="torchscript")
    with torch.no_grad():
        torch.testing.assert_close(_run_onnx(path, x), small(x), rtol=1e-4, atol=1e-5)
    # the pruned graph is really smaller than the unpruned one's
    big = compress.export_onnx(model, x, str(tmp_path / "big.onnx"), exporter="torchscript")
    assert (tmp_path / "small.onnx").stat().st_size < (tmp_path / "big.onnx").stat().st_size
    assert big.endswith("big.onnx")


def test_when_a_sparsified_model_is_exported_then_it_runs_with_the_masked_outputs(tmp_path):
    model, x = _tiny(1)
    masked = compress.prune(model, "magnitude", 0.9, strategy="unstructured", example_inputs=x)
    fast = compress.sparsify(masked, min_sparsity=0.7, crossover=1.0)
    assert any(isinstance(m, SparseLinear) for m in fast.modules())
    path = compress.export_onnx(fast, x, str(tmp_path / "sparse.onnx"), exporter="torchscript")
    with torch.no_grad():
        torch.testing.assert_close(_run_onnx(path, x), masked(x), rtol=1e-4, atol=1e-5)


def test_when_measured_in_onnxruntime_then_latency_is_timed_there_and_sizes_come_from_torch():
    model, x = _tiny()
    m_ort = compress.measure(model, x, backend="onnxruntime", repeats=3)
    m_torch = compress.measure(model, x, latency=False)
    assert m_ort.backend == "onnxruntime" and m_ort.latency_ms > 0 and m_ort.peak_memory_mb is None
    assert (m_ort.params, m_ort.flops) == (m_torch.params, m_torch.flops)
    assert "onnxruntime" in m_ort.compare(m_torch)


def test_when_the_model_cannot_be_exported_then_the_error_names_the_exporter(tmp_path):
    class Sampler(torch.nn.Module):  # the TorchScript exporter cannot trace a generator constant
        def forward(self, x):
            g = torch.Generator().manual_seed(0)
            return x + torch.rand(x.shape, generator=g)

    with pytest.raises(RuntimeError, match="torchscript"):
        compress.export_onnx(Sampler(), torch.randn(2, 3), str(tmp_path / "s.onnx"), exporter="torchscript")


@pytest.mark.parametrize("bad", [dict(exporter="tflite"), dict(backend="tensorrt")])
def test_when_an_unknown_exporter_or_backend_is_named_then_it_is_a_clear_error(tmp_path, bad):
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="exporter|backend"):
        if "exporter" in bad:
            compress.export_onnx(model, torch.randn(1, 3), str(tmp_path / "m.onnx"), **bad)
        else:
            compress.measure(model, torch.randn(1, 3), **bad)
