"""Setting a model up: which families are installed, what a missing package says, eval mode
after every load, and no third-party set-up noise (progress bars, info logs) during loads."""
import logging
import sys

import pytest
import torch

import compress
from compress.models import MissingPackageError, base as models_base, packages

ALL = compress.models.available()
INSTALLED = compress.models.available(installed_only=True)


def test_available_lists_every_family_and_installed_only_the_loadable_ones(monkeypatch):
    assert "transformer" in ALL and "ttm" in ALL
    assert set(INSTALLED) <= set(ALL)
    assert "transformer" in INSTALLED  # built in: needs nothing beyond torch
    monkeypatch.setitem(sys.modules, "tsfm_public", None)  # import tsfm_public now fails
    assert "ttm" in compress.models.available()
    assert "ttm" not in compress.models.available(installed_only=True)
    st = compress.models.status()["ttm"]
    assert not st.installed and st.missing == ("granite-tsfm",)
    assert "granite-tsfm==0.3.11" in st.install and "scripts/install_models.sh" in st.install


def test_status_names_each_familys_distributions():
    st = compress.models.status()
    assert set(st) == set(ALL)
    assert st["transformer"].requires == () and st["transformer"].installed and st["transformer"].install == ""
    assert "chronos-forecasting" in st["chronos_bolt"].requires
    assert "granite-tsfm" in st["ttm"].requires


@pytest.mark.parametrize("family,module,dist", [("ttm", "tsfm_public", "granite-tsfm"),
                                                ("patchtst", "transformers", "transformers"),
                                                ("chronos_bolt", "chronos", "chronos-forecasting"),
                                                ("moirai", "uni2ts", "uni2ts")])
def test_when_a_familys_package_is_missing_then_load_names_it_and_the_install_command(monkeypatch, family, module,
                                                                                      dist):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingPackageError) as err:
        compress.models.load(family, size="tiny")
    msg = str(err.value)
    assert f"'{family}'" in msg and dist in msg
    assert f"'{dist}==" in msg and "pip install" in msg and "scripts/install_models.sh" in msg
    assert isinstance(err.value, ImportError)  # `except ImportError` still catches it
    import pickle

    again = pickle.loads(pickle.dumps(err.value))  # a grid worker's error reaches the parent intact
    assert str(again) == msg and again.family == family


def test_when_a_dependency_of_the_package_fails_to_import_then_the_error_names_it(monkeypatch):
    # the family's own package is there, but something it imports is not
    cls = models_base.get_adapter("transformer")

    def build(**kw):
        raise ModuleNotFoundError("No module named 'einops'", name="einops")

    monkeypatch.setattr(cls, "build", classmethod(lambda c, **kw: build(**kw)))
    with pytest.raises(MissingPackageError, match=r"needs einops 0\.8\.2.*pip install 'einops==0\.8\.2'"):
        compress.models.load("transformer", size="tiny")


def test_install_hints_use_the_distributions_real_name():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    texts = [p.read_text() for p in [root / "README.md", *root.joinpath("compress").rglob("*.py")]]
    assert not any("compress[" in t for t in texts)  # the distribution is compress-tsfm
    assert any("compress-tsfm[" in t for t in texts)


def _all_eval(model):
    return [n for n, m in model.named_modules() if m.training]


@pytest.mark.parametrize("family", INSTALLED)
def test_every_load_returns_the_model_in_eval_mode(family, tmp_path):
    model = compress.models.load(family, size="tiny")
    assert _all_eval(model) == []
    x = model.example_inputs()
    with torch.no_grad():  # dropout off: the same input gives the same forecast
        assert torch.equal(model(x), model(x))
    model.train()
    model.save(tmp_path / "m")
    again = compress.models.load(tmp_path / "m")
    assert _all_eval(again) == []


@pytest.mark.parametrize("family", [f for f in ("ttm", "patchtst") if f in INSTALLED])
def test_shipped_pretrained_models_load_in_eval_mode(family):
    kw = {"pretrained": compress.models.patchtst.PRETRAINED_DIR, "horizon": 96} if family == "patchtst" else {}
    assert _all_eval(compress.models.load(family, **kw)) == []


needs_hf = pytest.mark.skipif("ttm" not in INSTALLED, reason="granite-tsfm / transformers not installed")


@needs_hf
def test_loading_a_checkpoint_shows_no_progress_bar_unless_verbose(capfd):
    from transformers.utils import logging as tf_logging

    compress.models.load("ttm")  # the shipped checkpoint, through from_pretrained
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err and "it/s" not in err
    assert tf_logging.is_progress_bar_enabled()  # the user's setting is back after the load
    compress.models.load("ttm", verbose=True)
    out, err = capfd.readouterr()
    assert "Loading weights" in err  # what the quiet load held back


def test_info_logs_are_held_back_during_a_load_and_warnings_kept(monkeypatch, caplog):
    cls = models_base.get_adapter("transformer")
    build = cls.build.__func__

    def noisy(c, **kw):
        logging.getLogger("transformers").info("set-up chatter")
        logging.info("root chatter")  # momentfm logs on the root logger
        logging.getLogger("transformers").warning("a real warning")
        return build(c, **kw)

    monkeypatch.setattr(cls, "build", classmethod(noisy))
    caplog.set_level(logging.INFO)  # even with INFO switched on (tsfm_public does that on import)
    compress.models.load("transformer", size="tiny")
    messages = [r.getMessage() for r in caplog.records]
    assert "a real warning" in messages
    assert "set-up chatter" not in messages and "root chatter" not in messages
    assert logging.getLogger().level == logging.INFO  # restored after the load
    caplog.clear()
    compress.models.load("transformer", size="tiny", verbose=True)
    assert "root chatter" in [r.getMessage() for r in caplog.records]


def test_a_python_warning_during_a_load_still_shows(monkeypatch):
    import warnings

    cls = models_base.get_adapter("transformer")
    build = cls.build.__func__

    def warns(c, **kw):
        warnings.warn("something the user should know", UserWarning)
        return build(c, **kw)

    monkeypatch.setattr(cls, "build", classmethod(warns))
    with pytest.warns(UserWarning, match="something the user should know"):
        compress.models.load("transformer", size="tiny")


def test_importing_granite_tsfm_during_a_load_leaves_root_logging_at_warning():
    import subprocess

    code = ("import logging, compress; compress.models.load('ttm', size='tiny'); "
            "print(logging.getLogger().getEffectiveLevel())")
    if "ttm" not in INSTALLED:
        pytest.skip("granite-tsfm not installed")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(logging.WARNING)  # tsfm_public alone sets INFO


def test_package_table_matches_the_install_script():
    import pathlib

    script = (pathlib.Path(__file__).resolve().parents[1] / "scripts" / "install_models.sh").read_text()
    for p in packages.PACKAGES.values():
        assert f'"{p.distribution}=={p.version}"' in script, p
