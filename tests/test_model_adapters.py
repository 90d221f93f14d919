"""The six adapters over real model packages (ttm, patchtst, timesfm, chronos_bolt, moment,
moirai): each builds a tiny model from a config, forecasts [B, H, C], names protected
modules inside itself, reloads local weights, and computes what its library computes.

Each family skips, with the reason, where its package is not installed
(scripts/install_models.sh installs them all)."""
import importlib
import json
import os
import time

import pytest
import torch

from compress.models import base as models_base

# family -> (package to import, why it may be missing)
PACKAGES = {
    "ttm": ("tsfm_public", "granite-tsfm is not installed (scripts/install_models.sh)"),
    "patchtst": ("transformers", "transformers is not installed (scripts/install_models.sh)"),
    "timesfm": ("transformers", "transformers is not installed (scripts/install_models.sh)"),
    "chronos_bolt": ("chronos", "chronos-forecasting is not installed (scripts/install_models.sh)"),
    "moment": ("momentfm", "momentfm is not installed (scripts/install_models.sh)"),
    "moirai": ("uni2ts.model.moirai", "uni2ts is not installed (scripts/install_models.sh)"),
}
FAMILIES = list(PACKAGES)


def need(family):
    module, reason = PACKAGES[family]
    pytest.importorskip(module, reason=reason)


def tiny(family, **config):
    need(family)
    torch.manual_seed(0)
    return models_base.load(family, size="tiny", **config)


def batch(model, batch_size=2, channels=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    c = model.n_channels or channels
    return torch.randn(batch_size, model.context_length, c, generator=g)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_registered(family):
    assert family in models_base.available()


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_forecasts_batch_horizon_channels_finite(family):
    model = tiny(family)
    x = batch(model)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (x.shape[0], model.horizon, x.shape[-1])
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_wraps_the_library_model_and_is_in_eval_mode(family):
    model = tiny(family)
    assert isinstance(model, models_base.Forecaster)
    assert model.model is not None and not model.training and not model.model.training
    assert model.context_length > 0 and model.horizon > 0
    json.dumps(model.config)  # the config is JSON-serialisable


@pytest.mark.parametrize("family", FAMILIES)
def test_channel_independent_families_accept_any_channel_count(family):
    model = tiny(family)
    assert model.n_channels is None
    for c in (1, 5):
        with torch.no_grad():
            y = model(torch.randn(2, model.context_length, c))
        assert y.shape == (2, model.horizon, c)


@pytest.mark.parametrize("family", FAMILIES)
def test_protected_modules_are_submodules_with_parameters(family):
    model = tiny(family)
    protected = model.protected_modules()
    assert len(protected) >= 2  # input embedding + forecasting head
    submodules = list(model.modules())
    for module in protected:
        assert any(module is m for m in submodules)
        assert sum(p.numel() for p in module.parameters()) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_builds_and_runs_fast(family):
    tiny(family)  # the package import is paid once, outside the timing
    t0 = time.perf_counter()
    model = tiny(family)
    with torch.no_grad():
        model(batch(model))
    # typically 0.01-0.3 s; the bound is loose so that a busy CI machine does not flake
    assert time.perf_counter() - t0 < 3.0


# Parameters the point forecast does not depend on, by design of the library model.
NO_GRADIENT = {
    "moment": ("encoder.embed_tokens.",),  # T5's token embedding: MOMENT feeds inputs_embeds
    "moirai": ("components.0.df.", "components.0.scale."),  # Student-t df/scale: not in its mean
}


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_backpropagates_to_every_parameter_the_forecast_uses(family):
    model = tiny(family)
    model.train()
    model(batch(model)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    unexpected = [n for n in missing if not any(k in n for k in NO_GRADIENT.get(family, ()))]
    assert not unexpected


@pytest.mark.parametrize("family", FAMILIES)
def test_pretrained_directory_reloads_the_same_forecasts(family, tmp_path):
    model = tiny(family)
    model.model.save_pretrained(str(tmp_path))
    again = models_base.load(family, pretrained=str(tmp_path), size="tiny")
    x = batch(model)
    with torch.no_grad():
        assert torch.allclose(model(x), again(x), atol=1e-6)


def test_pretrained_must_be_a_local_directory():
    need("patchtst")
    with pytest.raises(FileNotFoundError):
        models_base.load("patchtst", pretrained="namctin/patchtst_etth1_forecast")


@pytest.mark.parametrize("family", FAMILIES)
def test_unknown_size_is_rejected(family):
    need(family)
    with pytest.raises(ValueError):
        models_base.load(family, size="enormous")


# --- TTM: the shipped pretrained checkpoint ---------------------------------------------

def test_ttm_default_loads_the_shipped_r2_checkpoint():
    need("ttm")
    from compress.models.ttm import PRETRAINED_DIR

    for name in ("config.json", "model.safetensors", "README-Model.md"):
        assert os.path.exists(os.path.join(PRETRAINED_DIR, name))
    model = models_base.load("ttm")
    assert sum(p.numel() for p in model.parameters()) == 805_280
    assert (model.context_length, model.horizon, model.n_channels) == (512, 96, None)
    assert model.config["pretrained"] == PRETRAINED_DIR
    x = torch.randn(2, 512, 7)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 96, 7) and torch.isfinite(y).all()


def test_ttm_shorter_horizon_filters_the_pretrained_forecast():
    need("ttm")
    full, short = models_base.load("ttm"), models_base.load("ttm", horizon=24)
    x = torch.randn(2, 512, 3)
    with torch.no_grad():
        assert short.horizon == 24
        assert torch.allclose(short(x), full(x)[:, :24], atol=1e-5)


def test_ttm_forecast_is_the_library_prediction_output():
    model = tiny("ttm")
    x = batch(model)
    with torch.no_grad():
        ref = model.model(past_values=x).prediction_outputs
        assert torch.equal(model(x), ref)


# --- the adapters compute what their libraries compute ----------------------------------

def test_patchtst_folding_channels_into_batch_equals_the_multichannel_model():
    model = tiny("patchtst")
    from transformers import PatchTSTConfig, PatchTSTForPrediction

    cfg = PatchTSTConfig(**{**model.model.config.to_dict(), "num_input_channels": 4})
    multi = PatchTSTForPrediction(cfg).eval()
    multi.load_state_dict(model.model.state_dict())
    x = batch(model, channels=4)
    with torch.no_grad():
        assert torch.allclose(model(x), multi(past_values=x).prediction_outputs, atol=1e-5)


def test_timesfm_forecast_is_the_median_of_the_library_forecast():
    model = tiny("timesfm")
    x = batch(model)
    with torch.no_grad():
        out = model.model(past_values=x.permute(0, 2, 1).reshape(-1, x.shape[1]))
        ref = out.full_predictions[..., model.model.config.decode_index]  # [B*C, H]
    assert model.model.config.quantiles[model.model.config.decode_index - 1] == 0.5
    assert torch.allclose(model(x), ref.reshape(x.shape[0], x.shape[2], -1).permute(0, 2, 1), atol=1e-6)


def test_chronos_bolt_forecast_is_the_pipeline_median():
    model = tiny("chronos_bolt")
    from chronos import ChronosBoltPipeline

    x = batch(model)
    series = x.permute(0, 2, 1).reshape(-1, x.shape[1])
    quantiles = ChronosBoltPipeline(model.model).predict(series)  # [B*C, Q, H]
    median = quantiles[:, model.model.chronos_config.quantiles.index(0.5)]
    with torch.no_grad():
        assert torch.allclose(model(x), median.reshape(x.shape[0], x.shape[2], -1).permute(0, 2, 1), atol=1e-6)


def test_chronos_bolt_small_is_the_published_chronos_bolt_small():
    need("chronos_bolt")
    model = models_base.load("chronos_bolt", size="small")
    assert sum(p.numel() for p in model.parameters()) == 47_718_016
    assert (model.context_length, model.horizon) == (2048, 64)


def test_moment_is_trainable_and_pads_short_context():
    model = tiny("moment")
    assert all(p.requires_grad for p in model.parameters())  # not the library's frozen default
    with torch.no_grad():
        y = model(torch.randn(2, model.context_length - 10, 3))
    assert y.shape == (2, model.horizon, 3) and torch.isfinite(y).all()


def test_moment_pretrained_reconstruction_checkpoint_gets_a_new_forecasting_head(tmp_path):
    need("moment")
    from momentfm import MOMENTPipeline

    from compress.models.moment import SIZES

    spec = {k: v for k, v in SIZES["tiny"].items() if k != "forecast_horizon"}
    spec.update(task_name="reconstruction", model_name="MOMENT", transformer_type="encoder_only",
                enable_gradient_checkpointing=False)
    pretrained = MOMENTPipeline(spec, model_kwargs={"task_name": "reconstruction"})  # like MOMENT-1-*
    pretrained.save_pretrained(str(tmp_path))
    model = models_base.load("moment", pretrained=str(tmp_path), horizon=12)
    encoder = dict(pretrained.named_parameters())
    for name, p in model.model.named_parameters():
        if not name.startswith("head."):
            assert torch.equal(p, encoder[name]), name
    with torch.no_grad():
        assert model(torch.randn(2, 64, 3)).shape == (2, 12, 3)


@pytest.mark.parametrize("context_length,horizon,patch_size", [(32, 8, 8), (30, 10, 8), (37, 8, 16)])
def test_moirai_forecast_is_the_uni2ts_distribution_mean(context_length, horizon, patch_size):
    model = tiny("moirai", context_length=context_length, horizon=horizon, patch_size=patch_size)
    from uni2ts.model.moirai import MoiraiForecast

    ref = MoiraiForecast(prediction_length=horizon, target_dim=3, feat_dynamic_real_dim=0,
                         past_feat_dynamic_real_dim=0, context_length=context_length,
                         module=model.model, patch_size=patch_size)
    x = torch.randn(2, context_length, 3)
    with torch.no_grad():
        distr = ref._get_distr(patch_size, x, torch.ones_like(x, dtype=torch.bool),
                               torch.zeros(2, context_length, dtype=torch.long))
        expected = ref._format_preds(patch_size, distr.mean.unsqueeze(0), 3)[:, 0]  # [B, H, C]
        assert torch.allclose(model(x), expected, atol=1e-6)


def test_moirai_rejects_a_patch_size_the_module_lacks():
    need("moirai")
    with pytest.raises(ValueError):
        models_base.load("moirai", size="tiny", patch_size=32)


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_forecaster_loads_back_with_the_same_forecasts(family, tmp_path):
    model = tiny(family)
    try:
        importlib.import_module("compress.graph").describe_sizes
    except (ImportError, AttributeError):
        pytest.skip("compress.graph.describe_sizes (used by Forecaster.save) is not there yet")
    model.save(str(tmp_path))
    again = models_base.load(str(tmp_path))
    x = batch(model)
    with torch.no_grad():
        assert torch.allclose(model(x), again(x))


def test_shipped_ttm_reproduces_its_published_zero_shot_ettH1_mse():
    pytest.importorskip("tsfm_public", reason="granite-tsfm not installed")
    import compress

    model = compress.models.load("ttm")
    test = compress.data.load("ETTh1", context_length=512, horizon=96, split="test")
    r = compress.evaluate(model, test, batch_size=256)
    assert r["n_windows"] == 2785
    assert abs(r["mse"] - 0.363) <= 0.005, r
