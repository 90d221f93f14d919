"""The shipped pretrained Transformer TSFM: PatchTST pretrained without ETT data
(compress/models/weights/patchtst-mini-pretrained, recipe in benchmarks/pretrain)."""
import json
import os

import pytest
import torch

import compress
from compress.models import base as models_base

pytest.importorskip("transformers", reason="transformers is not installed (scripts/install_models.sh)")

CHECKPOINT = os.path.join(os.path.dirname(compress.__file__), "models", "weights", "patchtst-mini-pretrained")
PARAMS = 2_523_840  # as RECIPE.md states: d_model 192, 3 layers, FFN 768, 32 patches, 192-step head
HEAD_ROW = 192 * 32 + 1  # one output step of the flatten head: d_model * patches weights + bias


def load(horizon=None):
    kw = {} if horizon is None else {"horizon": horizon}
    return models_base.load("patchtst", pretrained=CHECKPOINT, **kw)


def test_checkpoint_ships_with_its_recipe_and_fits_the_package():
    for name in ("config.json", "model.safetensors", "RECIPE.md"):
        assert os.path.isfile(os.path.join(CHECKPOINT, name)), name
    size = sum(os.path.getsize(os.path.join(CHECKPOINT, f)) for f in os.listdir(CHECKPOINT))
    assert size < 20 * 2**20
    with open(os.path.join(CHECKPOINT, "config.json")) as f:
        cfg = json.load(f)
    assert (cfg["context_length"], cfg["prediction_length"], cfg["num_input_channels"]) == (512, 192, 1)
    with open(os.path.join(CHECKPOINT, "RECIPE.md")) as f:
        recipe = f.read()
    assert f"{PARAMS:,}" in recipe and "No ETT data" in recipe


def test_loads_with_the_stated_parameter_count():
    model = load()
    assert sum(p.numel() for p in model.parameters()) == PARAMS
    assert (model.context_length, model.horizon, model.n_channels) == (512, 192, None)
    assert type(model.model).__name__ == "PatchTSTForPrediction"
    # horizon 96 keeps the first 96 rows of the head: the parameters count only what is used
    assert sum(p.numel() for p in load(96).parameters()) == PARAMS - 96 * HEAD_ROW


@pytest.mark.parametrize("horizon", [96, 192])
def test_forecasts_are_finite_with_the_right_shape(horizon):
    model = compress.models.load("patchtst", pretrained=CHECKPOINT, horizon=horizon)
    assert model.horizon == horizon
    x = torch.randn(2, 512, 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, horizon, 7) and torch.isfinite(y).all()


def test_horizon_96_is_the_first_96_steps_of_the_192_step_forecast():
    x = torch.randn(3, 512, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, short = load(192)(x), load(96)(x)
    torch.testing.assert_close(short, full[:, :96], rtol=1e-5, atol=1e-5)


def test_a_horizon_or_context_the_checkpoint_cannot_do_is_rejected():
    with pytest.raises(ValueError, match="horizon"):
        load(336)
    with pytest.raises(ValueError, match="context_length"):
        models_base.load("patchtst", pretrained=CHECKPOINT, context_length=336)


def test_zero_shot_etth1_beats_repeating_the_last_value():
    torch.set_num_threads(1)
    test = compress.data.load("ETTh1", 512, 96, "test", stride=8)  # 349 of the 2785 windows
    model = load(96)
    mse = compress.evaluate(model, test, batch_size=256)["mse"]
    se = n = 0.0
    for past, future in test.batches(256):
        naive = past[:, -1:, :].expand_as(future)
        se += float((naive - future).pow(2).sum())
        n += future.numel()
    naive_mse = se / n
    assert mse < naive_mse, (mse, naive_mse)
