"""compress.sparsify / SparseLinear: the CSR kernel computes the masked dense model exactly."""
import copy
import io
import warnings

import pytest
import torch
import torch.nn.utils.prune
from torch import nn

import compress
from compress import sparse
from compress.sparse import SparseLinear, restore_layout, sparse_layout, sparsify
from tiny import TinyForecaster

needs_numba = pytest.mark.skipif(not sparse.kernel_available("numba"), reason="numba not installed")


def _random_sparse_(weight, density, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight.mul_(torch.rand(weight.shape, generator=g) < density)
    return weight


@needs_numba
@pytest.mark.parametrize("shape,tokens,density", [((37, 29), 5, 0.1), ((64, 48), 700, 0.3), ((16, 8), 3, 0.0),
                                                   ((48, 64), 513, 0.05)])
@pytest.mark.parametrize("threads", [1, 2])
def test_when_kernel_multiplies_then_it_matches_the_dense_linear(shape, tokens, density, threads):
    out_f, in_f = shape
    lin = nn.Linear(in_f, out_f)
    _random_sparse_(lin.weight, density)
    with torch.no_grad():
        lin.weight[0] = 0.0  # an empty row
    x = torch.randn(2, tokens, in_f)  # tokens > 512 crosses the numba kernel's tile boundary
    prior = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for kernel in ("numba", "torch_csr"):
            sp = SparseLinear.from_dense(lin, kernel)
            with torch.no_grad():
                assert sp._use_kernel(x) == kernel
                torch.testing.assert_close(sp(x), lin(x), rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(prior)


@needs_numba
def test_when_conv1d_is_pointwise_then_it_is_sparsified_and_matches():
    conv = nn.Conv1d(24, 40, 1)
    _random_sparse_(conv.weight, 0.1)
    model = nn.Sequential(conv, nn.ReLU(), nn.Conv1d(40, 8, 3))  # the kernel-3 conv stays
    x = torch.randn(3, 24, 11)
    for kernel in ("numba", "torch_csr"):
        fast = sparsify(model, min_sparsity=0.5, crossover=1.0, kernel=kernel)
        assert isinstance(fast[0], SparseLinear) and isinstance(fast[2], nn.Conv1d)
        assert fast.compress_sparse["0"]["kernel"] == kernel
        with torch.no_grad():
            torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(fast[0](x[0]), conv(x[0]), rtol=1e-5, atol=1e-5)  # unbatched input


def _pruned_tiny(ratio=0.85):
    torch.manual_seed(0)
    model = TinyForecaster(L=16, H=4, C=3, d=32, h=4, f=64).eval()
    x = torch.randn(4, 16, 3)
    pruned = compress.prune(model, "magnitude", ratio, strategy="unstructured", example_inputs=x)
    return pruned, x


def test_when_a_pruned_model_is_sparsified_then_outputs_equal_the_masked_model_and_input_is_untouched():
    pruned, x = _pruned_tiny()
    before = copy.deepcopy(pruned.state_dict())
    fast = sparsify(pruned, min_sparsity=0.7, crossover=1.0)
    converted = [n for n, m in fast.named_modules() if isinstance(m, SparseLinear)]
    assert converted and set(converted) == set(fast.compress_sparse)
    # the protected embedding and head of unstructured pruning are dense: they stay Linear
    assert isinstance(fast.embed, nn.Linear)
    assert all(isinstance(m, nn.Linear) for m in pruned.modules() if m is not pruned and not list(m.children())
               and hasattr(m, "weight") and m.weight.dim() == 2)  # the user's model is not modified
    for k, v in pruned.state_dict().items():
        assert torch.equal(v, before[k])
    with torch.no_grad():
        torch.testing.assert_close(fast(x), pruned(x), rtol=1e-5, atol=1e-5)


def test_when_a_layer_is_denser_than_min_sparsity_then_it_stays_dense():
    a, b = nn.Linear(16, 16), nn.Linear(16, 16)
    _random_sparse_(a.weight, 0.1)
    _random_sparse_(b.weight, 0.5)
    fast = sparsify(nn.Sequential(a, b), min_sparsity=0.7, crossover=1.0)
    assert isinstance(fast[0], SparseLinear) and type(fast[1]) is nn.Linear


def test_when_the_crossover_is_below_every_density_then_nothing_is_converted_and_it_warns():
    a = nn.Linear(16, 16)
    _random_sparse_(a.weight, 0.2)
    with pytest.warns(UserWarning, match="sparse enough"):
        fast = sparsify(nn.Sequential(a), min_sparsity=0.5, crossover=0.0)
    assert type(fast[0]) is nn.Linear


def test_when_the_environment_sets_the_crossover_then_it_is_used(monkeypatch):
    a = nn.Linear(16, 16)
    _random_sparse_(a.weight, 0.2)
    monkeypatch.setenv("COMPRESS_SPARSE_CROSSOVER", "1.0")
    assert isinstance(sparsify(nn.Sequential(a), min_sparsity=0.5)[0], SparseLinear)
    monkeypatch.setenv("COMPRESS_SPARSE_CROSSOVER", "lots")
    with pytest.raises(ValueError, match="COMPRESS_SPARSE_CROSSOVER"):
        sparsify(nn.Sequential(a), min_sparsity=0.5)


@needs_numba
def test_when_the_crossover_is_measured_then_it_is_cached_per_shape(monkeypatch):
    sparse.clear_crossover_cache()
    calls = []
    real = sparse._time
    monkeypatch.setattr(sparse, "_time", lambda fn, **kw: calls.append(1) or real(fn, budget_s=0.003, reps=3))
    d1 = sparse.crossover_density(32, 16, 8)
    n = len(calls)
    d2 = sparse.crossover_density(32, 16, 8, kernel="torch_csr")
    kernel, speedup = sparse.choose_kernel(32, 16, 8, density=0.1)
    # dense + 2 kernels x 2 probe densities, once; later calls for the shape time nothing
    assert n == 5 and len(calls) == n
    assert 0.0 <= d1 <= 1.0 and 0.0 <= d2 <= 1.0 and kernel in ("numba", "torch_csr", "dense") and speedup >= 1.0
    sparse.crossover_density(32, 16, 9)  # another shape is measured again
    assert len(calls) == 2 * n


def test_when_kernels_are_profiled_then_the_choice_follows_the_fitted_times(monkeypatch):
    # a fake profile: numba fast when sparse, torch_csr flat; dense 1.0
    prof = {"dense": 1.0, "fits": {"numba": (0.1, 2.0), "torch_csr": (0.6, 0.5)}, "threads": 1}
    monkeypatch.setattr(sparse, "_profile", lambda *a, **k: prof)
    assert sparse.choose_kernel(8, 8, 8, density=0.1)[0] == "numba"      # 0.3 vs 0.55
    assert sparse.choose_kernel(8, 8, 8, density=0.6)[0] == "torch_csr"  # 1.3 vs 0.9
    assert sparse.choose_kernel(8, 8, 8, density=0.99)[0] == "dense"     # both slower than 1.0
    assert sparse.crossover_density(8, 8, 8, kernel="numba") == pytest.approx(0.45)
    assert sparse.crossover_density(8, 8, 8, kernel="torch_csr") == pytest.approx(0.8)


def test_when_crossover_is_measured_then_example_inputs_are_needed():
    a = nn.Linear(16, 16)
    _random_sparse_(a.weight, 0.05)
    if not sparse.kernel_available("numba"):
        pytest.skip("numba not installed")
    with pytest.raises(ValueError, match="example_inputs"):
        sparsify(nn.Sequential(a), min_sparsity=0.5)


def test_when_training_needs_gradients_then_the_dense_path_gives_the_same_gradients():
    lin = nn.Linear(12, 10)
    _random_sparse_(lin.weight, 0.2)
    sp = SparseLinear.from_dense(lin)
    x1 = torch.randn(4, 12, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    assert not sp._use_kernel(x1)
    sp(x1).pow(2).sum().backward()
    lin(x2).pow(2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(sp.bias.grad, lin.bias.grad)


def test_when_numba_is_missing_then_sparsify_warns_and_the_module_falls_back_to_dense(monkeypatch):
    lin = nn.Linear(16, 8)
    _random_sparse_(lin.weight, 0.1)
    sp = SparseLinear.from_dense(lin)  # made while the kernel "was there"
    monkeypatch.setattr(sparse, "_numba_kernels", lambda: None)
    with pytest.warns(UserWarning, match="numba is not installed"):
        out = sparsify(nn.Sequential(lin), crossover=1.0, kernel="numba")
    assert out.compress_sparse["0"]["kernel"] == "torch_csr"  # torch's own kernel instead
    assert sparsify(nn.Sequential(lin), crossover=1.0).compress_sparse["0"]["kernel"] == "torch_csr"
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert not sp._use_kernel(x)
        torch.testing.assert_close(sp(x), lin(x))


def test_when_a_sparse_model_is_saved_and_loaded_then_it_is_compressed_and_equal():
    pruned, x = _pruned_tiny(0.9)
    fast = sparsify(pruned, min_sparsity=0.7, crossover=1.0)
    buf, dense_buf = io.BytesIO(), io.BytesIO()
    torch.save(fast.state_dict(), buf)
    torch.save(pruned.state_dict(), dense_buf)
    assert buf.tell() < 0.6 * dense_buf.tell()
    buf.seek(0)
    torch.manual_seed(123)
    fresh = restore_layout(TinyForecaster(L=16, H=4, C=3, d=32, h=4, f=64).eval(), sparse_layout(fast))
    fresh.load_state_dict(torch.load(buf, weights_only=True))  # strict: every CSR array has its place
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), pruned(x), rtol=1e-5, atol=1e-5)
    assert sparse_layout(fresh) == sparse_layout(fast)


def test_when_a_sparse_model_is_measured_then_counts_match_the_masked_model_and_stored_bytes_shrink():
    pruned, x = _pruned_tiny(0.9)
    fast = sparsify(pruned, min_sparsity=0.7, crossover=1.0)
    m_fast = compress.measure(fast, x, latency=False, memory=False)
    m_masked = compress.measure(pruned, x, latency=False, memory=False)
    assert (m_fast.params, m_fast.nonzero_params, m_fast.prunable_params) == \
        (m_masked.params, m_masked.nonzero_params, m_masked.prunable_params)
    assert m_fast.prunable_density == pytest.approx(m_masked.prunable_density)
    # CSR: 4 bytes value + 4 bytes column index per non-zero + row pointers, vs 4 bytes per entry
    assert m_fast.weight_mb < 0.6 * m_masked.weight_mb


@pytest.mark.parametrize("bad", [1.5, -0.1, True, "0.7"])
def test_when_min_sparsity_is_out_of_range_then_it_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="min_sparsity"):
        sparsify(nn.Linear(2, 2), min_sparsity=bad, crossover=1.0)


def test_when_a_layer_was_masked_with_torch_prune_then_it_is_sparsified_from_the_effective_weight():
    lin = nn.Linear(20, 20)
    torch.nn.utils.prune.random_unstructured(lin, "weight", amount=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # inplace: a module holding torch.nn.utils.prune's computed weight cannot be deep-copied
        fast = sparsify(nn.Sequential(lin), min_sparsity=0.8, crossover=1.0, inplace=True)
    assert isinstance(fast[0], SparseLinear)
    x = torch.randn(2, 20)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), lin(x), rtol=1e-5, atol=1e-5)


def test_when_a_sparsified_forecaster_is_saved_then_load_rebuilds_it_compressed(tmp_path):
    torch.manual_seed(0)
    model = compress.models.load("transformer", size="tiny").eval()
    x = torch.randn(2, model.context_length, model.n_channels)
    pruned = compress.prune(model, "magnitude", 0.9, strategy="unstructured", example_inputs=x)
    fast = sparsify(pruned, min_sparsity=0.7, crossover=1.0, kernel="torch_csr")
    assert fast.compress_sparse
    fast.save(tmp_path / "sparse")
    pruned.save(tmp_path / "masked")
    again = compress.models.load(str(tmp_path / "sparse"))
    assert sparse_layout(again) == sparse_layout(fast)
    with torch.no_grad():
        torch.testing.assert_close(again(x), pruned(x), rtol=1e-5, atol=1e-5)
    size = lambda d: sum(f.stat().st_size for f in d.iterdir() if f.suffix == ".safetensors")  # noqa: E731
    assert size(tmp_path / "sparse") < size(tmp_path / "masked")
