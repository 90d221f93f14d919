"""Saved models: safetensors + JSON description, atomic writes, clear errors, no unpickling."""
import json
import os
import warnings

import pytest
import torch

import compress
from compress.models import base as models_base

FAMILIES = compress.models.available()


def tiny(family="transformer"):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return compress.models.load(family, size="tiny")
    except ImportError as e:  # pragma: no cover - depends on the install
        pytest.skip(f"{family}: model package not installed ({e})")


def batch(model, seed=0):
    x = model.example_inputs(2, 3)
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


def pruned(family="transformer"):
    model = tiny(family)
    x = batch(model)
    return compress.prune(model, "magnitude", ratio=0.5, example_inputs=x).eval(), x


@pytest.fixture
def no_unpickling(monkeypatch):
    """Loading must never unpickle: any torch.load / pickle.load is an error."""
    import pickle

    def forbid(*a, **k):
        raise AssertionError("load unpickled a file")

    monkeypatch.setattr(torch, "load", forbid)
    monkeypatch.setattr(pickle, "load", forbid)
    monkeypatch.setattr(pickle, "loads", forbid)


def test_when_a_pruned_model_is_saved_then_the_directory_holds_safetensors_and_a_description(tmp_path, no_unpickling):
    small, x = pruned()
    small.save(tmp_path / "m")
    assert sorted(os.listdir(tmp_path / "m")) == ["compress_config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "m" / "compress_config.json").read_text())
    assert meta["family"] == "transformer" and meta["format_version"] == 1
    # per-layer widths after pruning are in the description
    fc = "model.encoder.attn_layers.0.conv1.weight"
    assert meta["tensors"][fc]["shape"] == list(small.get_submodule(fc.rsplit(".", 1)[0]).weight.shape)
    assert meta["pruning"] == small.compress_pruning
    again = compress.models.load(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(again(x), small(x))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_pruned_round_trips_bit_exactly_without_unpickling(family, tmp_path, no_unpickling):
    small, x = pruned(family)
    first = next(iter(small.parameters()))
    first.requires_grad_(False)  # frozen stays frozen
    small.save(tmp_path / "m")
    again = compress.models.load(str(tmp_path / "m"))
    assert type(again) is type(small) and not again.training
    a, b = small.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert [p.requires_grad for p in again.parameters()] == [p.requires_grad for p in small.parameters()]
    with torch.no_grad():
        assert torch.equal(again(x), small(x))


def test_when_a_save_fails_half_way_then_the_previous_save_is_intact(tmp_path, monkeypatch):
    first = tiny()
    x = batch(first)
    first.save(tmp_path / "m")
    second, _ = pruned()
    real_dump = json.dump

    def boom(obj, f, *a, **k):  # writes part of the description, then dies
        f.write("{\"family\": ")
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", boom)
    with pytest.raises(OSError):
        second.save(tmp_path / "m")
    monkeypatch.setattr(json, "dump", real_dump)
    again = compress.models.load(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(again(x), first(x))
    assert os.listdir(tmp_path) == ["m"]  # no temporary directories left behind


def test_when_a_save_replaces_a_previous_one_then_it_holds_the_new_model(tmp_path):
    first = tiny()
    first.save(tmp_path / "m")
    second, x = pruned()
    second.save(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(compress.models.load(tmp_path / "m")(x), second(x))
    assert os.listdir(tmp_path) == ["m"]


def test_when_the_target_holds_other_files_then_save_refuses_rather_than_delete_them(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a saved compress model"):
        tiny().save(tmp_path / "m")
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"


def _break(path, how):
    w, d = path / "model.safetensors", path / "compress_config.json"
    if how == "missing weights":
        w.unlink()
    elif how == "empty weights":
        w.write_bytes(b"")
    elif how == "truncated weights":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif how == "missing description":
        d.unlink()
    elif how == "corrupt description":
        d.write_text(d.read_text()[:100])
    elif how == "wrong shapes":
        meta = json.loads(d.read_text())
        name = next(k for k, v in meta["tensors"].items() if len(v["shape"]) == 2)
        meta["tensors"][name]["shape"][0] += 1
        d.write_text(json.dumps(meta))
    elif how == "missing tensor":
        meta = json.loads(d.read_text())
        meta["tensors"]["model.extra.weight"] = {"shape": [2], "dtype": "float32", "kind": "parameter"}
        d.write_text(json.dumps(meta))


@pytest.mark.parametrize("how, words", [
    ("missing weights", "missing"), ("empty weights", "empty"), ("truncated weights", "truncated"),
    ("missing description", "compress_config.json is missing"), ("corrupt description", "corrupt"),
    ("wrong shapes", "wrong shapes"), ("missing tensor", "missing tensors"),
])
def test_when_a_saved_directory_is_broken_then_load_says_what_is_wrong(tmp_path, how, words):
    from compress.models.saving import SavedModelError

    tiny().save(tmp_path / "m")
    _break(tmp_path / "m", how)
    with pytest.raises(SavedModelError, match=words):
        compress.models.load(tmp_path / "m")


def test_when_a_local_directory_is_named_like_a_family_then_the_family_is_loaded(tmp_path, monkeypatch):
    tiny("informer").save(tmp_path / "transformer")
    monkeypatch.chdir(tmp_path)
    model = compress.models.load("transformer", size="tiny")
    assert model.family == "transformer"
    assert compress.models.load("./transformer").family == "informer"  # a path still loads the directory


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_rejects_a_misspelt_config_key(family):
    tiny(family)  # skips when the package is missing
    with pytest.raises(ValueError, match="horizn"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compress.models.load(family, size="tiny", horizn=8)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_load_returns_a_model_in_eval_mode(family, tmp_path):
    model = tiny(family)
    assert not model.training and not any(m.training for m in model.modules())
    model.train().save(tmp_path / "m")
    again = compress.models.load(tmp_path / "m")
    assert not any(m.training for m in again.modules())


def test_when_a_directory_holds_an_old_pickle_then_load_refuses_and_convert_rewrites_it(tmp_path):
    from compress.models.saving import SavedModelError, convert_legacy

    small, x = pruned()
    old = tmp_path / "old"
    old.mkdir()
    (old / "compress_config.json").write_text(json.dumps({"family": "transformer", "config": small.config}))
    torch.save(small, old / "model.pt")
    with pytest.raises(SavedModelError, match="convert"):
        compress.models.load(old)
    with pytest.warns(UserWarning, match="trust"):
        trusted = compress.models.load(old, allow_pickle=True)
    assert not trusted.training
    convert_legacy(old, tmp_path / "new")
    again = compress.models.load(tmp_path / "new")
    with torch.no_grad():
        assert torch.equal(again(x), small(x))
    assert "model.pt" not in os.listdir(tmp_path / "new")


def test_when_the_converter_cli_runs_then_the_directory_is_rewritten_in_place(tmp_path):
    from compress.models.saving import main

    model = tiny()
    old = tmp_path / "old"
    old.mkdir()
    (old / "compress_config.json").write_text(json.dumps({"family": "transformer"}))
    torch.save(model, old / "model.pt")
    assert main(["convert", str(old)]) == 0
    assert sorted(os.listdir(old)) == ["compress_config.json", "model.safetensors"]


def test_when_the_description_adds_an_unknown_module_type_then_load_names_it(tmp_path):
    from compress.models.saving import SavedModelError

    tiny().save(tmp_path / "m")
    d = tmp_path / "m" / "compress_config.json"
    meta = json.loads(d.read_text())
    meta["modules"]["model.projection"]["type"] = "evil.module.Payload"
    d.write_text(json.dumps(meta))
    with pytest.raises(SavedModelError, match="evil.module.Payload"):
        compress.models.load(tmp_path / "m")


def test_when_blocks_were_removed_then_load_removes_the_same_blocks(tmp_path):
    model = tiny()
    x = batch(model)
    layers = model.model.encoder.attn_layers
    assert len(layers) == 2
    del layers[0]  # what depth pruning does, recorded as the original index
    model.compress_removed_blocks = {"model.encoder.attn_layers": [0]}
    model.save(tmp_path / "m")
    again = compress.models.load(tmp_path / "m")
    assert len(again.model.encoder.attn_layers) == 1
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
