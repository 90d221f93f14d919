"""Pruned models written in their family's own save_pretrained layout load back through the
family's library (transformers, granite-tsfm, chronos) without compress, with the pruned
model's forecasts; what no config can describe is refused with the reason, and nothing is
written then."""
import json
import os

import pytest
import torch

import compress
from compress.models import NativeLayoutError

INSTALLED = compress.models.available(installed_only=True)


def need(family):
    if family not in INSTALLED:
        pytest.skip(f"{family}'s package is not installed ({compress.models.status()[family].install})")


def tiny(family):
    need(family)
    torch.manual_seed(0)
    return compress.models.load(family, size="tiny")


def series(model, channels=1, batch=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.context_length, channels, generator=g)


def depth(model):
    return compress.prune(model, ratio=0.5, strategy="layers", criterion="random", options={"select": "last"})


def test_patchtst_ffn_and_depth_pruned_loads_with_transformers(tmp_path):
    from transformers import PatchTSTForPrediction

    small = compress.prune(depth(tiny("patchtst")), ratio=0.5, units=("ffn",))
    compress.models.save_pretrained(small, tmp_path / "hf")
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["ffn_dim"] == 16 and cfg["num_hidden_layers"] == 1
    loaded = PatchTSTForPrediction.from_pretrained(tmp_path / "hf").eval()
    x = series(small)
    with torch.no_grad():
        assert torch.equal(loaded(past_values=x).prediction_outputs, small(x))
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in small.parameters())


def test_timesfm_heads_and_ffn_pruned_loads_with_transformers(tmp_path):
    from transformers import TimesFm2_5ModelForPrediction

    small = compress.prune(tiny("timesfm"), ratio=0.5)  # heads 4 -> 2 and FFN 64 -> 32 in every layer
    small.save_pretrained(tmp_path / "hf")
    loaded = TimesFm2_5ModelForPrediction.from_pretrained(tmp_path / "hf").eval()
    assert (loaded.config.num_attention_heads, loaded.config.intermediate_size) == (2, 32)
    x = series(small)
    with torch.no_grad():
        want = small(x)[..., 0]  # [B, H]
        got = loaded(past_values=x[..., 0]).mean_predictions[:, : small.horizon]
    assert torch.equal(got, want)


def test_chronos_bolt_depth_pruned_loads_with_the_chronos_pipeline(tmp_path):
    from chronos import BaseChronosPipeline

    small = depth(tiny("chronos_bolt"))
    assert len(small.model.encoder.block) == 1  # its first block removed: the bias table moved
    small.save_pretrained(tmp_path / "hf")
    pipe = BaseChronosPipeline.from_pretrained(str(tmp_path / "hf"), device_map="cpu")
    assert pipe.model.config.num_layers == 1 and pipe.model.config.num_decoder_layers == 1
    x = series(small)
    with torch.no_grad():
        q = pipe.predict(x[..., 0])  # [B, Q, H]
        want = small(x)[..., 0]
    assert torch.allclose(q[:, small.median_index, :], want, atol=1e-6, rtol=1e-6)


def test_ttm_structured_and_depth_pruned_loads_with_granite_tsfm(tmp_path):
    from tsfm_public import TinyTimeMixerForPrediction

    small = compress.prune(depth(tiny("ttm")), ratio=0.5)  # expansion factor 2 -> 1 in every mixer
    small.save_pretrained(tmp_path / "hf")
    loaded = TinyTimeMixerForPrediction.from_pretrained(tmp_path / "hf").eval()
    assert loaded.config.expansion_factor == 1 and loaded.config.num_layers == 1
    x = series(small, channels=3)
    with torch.no_grad():
        assert torch.equal(loaded(past_values=x).prediction_outputs, small(x))


def test_the_shipped_ttm_pruned_by_half_loads_with_granite_tsfm(tmp_path):
    need("ttm")
    from tsfm_public import TinyTimeMixerForPrediction

    small = compress.prune(compress.models.load("ttm"), ratio=0.5)
    small.save_pretrained(tmp_path / "hf")
    loaded = TinyTimeMixerForPrediction.from_pretrained(tmp_path / "hf").eval()
    x = series(small, channels=2, batch=2)
    with torch.no_grad():
        assert torch.equal(loaded(past_values=x).prediction_outputs, small(x))


def test_unstructured_zeros_are_kept_in_the_native_layout(tmp_path):
    from transformers import PatchTSTForPrediction

    sparse = compress.prune(tiny("patchtst"), ratio=0.5, strategy="unstructured")
    sparse.save_pretrained(tmp_path / "hf")
    loaded = PatchTSTForPrediction.from_pretrained(tmp_path / "hf")
    zeros = lambda m: sum(int((p == 0).sum()) for p in m.parameters())  # noqa: E731
    assert zeros(loaded) == zeros(sparse.model) > 0


def test_compress_save_can_write_the_native_layout_beside_its_own(tmp_path):
    from transformers import PatchTSTForPrediction

    small = compress.prune(tiny("patchtst"), ratio=0.5, units=("ffn",))
    small.save(tmp_path / "m", layouts=("hf",))
    x = series(small)
    again = compress.models.load(tmp_path / "m")
    loaded = PatchTSTForPrediction.from_pretrained(tmp_path / "m" / "hf").eval()
    with torch.no_grad():
        assert torch.equal(again(x), small(x))
        assert torch.equal(loaded(past_values=x).prediction_outputs, small(x))
    small.save(tmp_path / "m", layouts=("hf",))  # replacing it is fine: the hf folder is its own


@pytest.mark.parametrize("family", ["patchtst", "timesfm", "ttm"])
def test_when_layers_are_cut_differently_then_the_error_says_why_and_nothing_is_written(family, tmp_path):
    model = tiny(family)
    units = ("ffn",) if family == "patchtst" else ("ffn", "heads")
    kept_whole = model.get_submodule(model.layer_stacks()[0].path + ".1")  # one layer left at full width
    small = compress.prune(model, ratio=0.5, units=units, ignore=[kept_whole])
    with pytest.raises(NativeLayoutError, match=r"differ.*one number.*scope='layer'.*compress format"):
        compress.models.save_pretrained(small, tmp_path / "hf")
    assert os.listdir(tmp_path) == []


def test_patchtst_head_pruning_is_refused_with_the_reason(tmp_path):
    small = compress.prune(tiny("patchtst"), ratio=0.5)
    with pytest.raises(NativeLayoutError, match=r"head_dim = d_model / num_attention_heads.*units=\('ffn',\)"):
        small.save_pretrained(tmp_path / "hf")


def test_chronos_bolt_head_and_ffn_pruning_are_refused_with_the_reason(tmp_path):
    model = tiny("chronos_bolt")
    with pytest.raises(NativeLayoutError, match="relative-position bias"):
        compress.prune(model, ratio=0.5, units=("heads",)).save_pretrained(tmp_path / "a")
    with pytest.raises(NativeLayoutError, match=r"d_ff sizes both the FFN.*patch embedding"):
        compress.prune(model, ratio=0.5, units=("ffn",)).save_pretrained(tmp_path / "b")


def test_ttm_cut_to_a_fractional_expansion_factor_is_refused(tmp_path):
    small = compress.prune(tiny("ttm"), ratio=0.25)  # 2 -> 1.5
    with pytest.raises(NativeLayoutError, match="whole number"):
        small.save_pretrained(tmp_path / "hf")


def test_a_family_without_a_native_layout_says_which_have_one(tmp_path):
    with pytest.raises(NativeLayoutError, match=r"no save_pretrained layout.*patchtst, timesfm, chronos_bolt, ttm"):
        compress.models.save_pretrained(compress.models.load("transformer", size="tiny"), tmp_path / "hf")


def test_when_the_library_would_load_a_different_model_then_nothing_is_written(tmp_path, monkeypatch):
    small = compress.prune(tiny("patchtst"), ratio=0.5, units=("ffn",))
    right = type(small).native_config

    def wrong(self):  # same tensors, a different computation (no per-window scaling)
        cfg = right(self)
        cfg.scaling = None
        return cfg

    monkeypatch.setattr(type(small), "native_config", wrong)
    with pytest.raises(NativeLayoutError, match="forecasts differently"):
        small.save_pretrained(tmp_path / "hf")
    assert os.listdir(tmp_path) == []


def test_a_directory_holding_other_files_is_not_replaced(tmp_path):
    small = tiny("patchtst")
    target = tmp_path / "hf"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(NativeLayoutError, match="notes.txt"):
        small.save_pretrained(target)
    assert (target / "notes.txt").read_text() == "mine"
    (target / "notes.txt").unlink()
    small.save_pretrained(target)
    small.save_pretrained(target)  # a previous save_pretrained layout is replaced
    assert sorted(os.listdir(target)) == ["config.json", "model.safetensors"]


def test_saving_leaves_the_model_and_the_random_state_as_they_were(tmp_path):
    small = compress.prune(tiny("timesfm"), ratio=0.5).train()
    state = torch.random.get_rng_state()
    small.save_pretrained(tmp_path / "hf")
    assert all(m.training for m in small.modules())
    assert torch.equal(torch.random.get_rng_state(), state)
