"""Silence the model libraries' set-up noise while `compress.models.load` builds a model.

Why this module exists: loading a shipped checkpoint printed a transformers "Loading
weights" progress bar per model, and importing granite-tsfm (``tsfm_public``) calls
``logging.basicConfig(level=INFO)`` on the root logger, after which every library's info
log (momentfm's "Initializing pre-trained transformer ...", ...) reached the user's
terminal. None of that was asked for. `quiet_loading()` turns off transformers' /
huggingface_hub's progress bars, keeps the root logger and the libraries' loggers at
WARNING, and makes granite-tsfm configure itself at WARNING, for the duration of a load
only: everything is restored afterwards. Python warnings and logged warnings/errors go
through unchanged. ``load(..., verbose=True)`` skips all of it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys

__all__ = ["quiet_loading"]

#: loggers held at WARNING during a load (their info logs are set-up chatter)
_LOGGERS = ("", "transformers", "huggingface_hub", "tsfm_public", "momentfm", "chronos", "gluonts", "uni2ts",
            "lightning", "lightning.pytorch", "pytorch_lightning", "timesfm", "accelerate")
_TSFM_LEVEL = "TSFM_PYTHON_LOGGING_LEVEL"


@contextlib.contextmanager
def _loggers_at_warning():
    saved = []
    for name in _LOGGERS:
        lg = logging.getLogger(name)
        saved.append((lg, lg.level))
        if lg.getEffectiveLevel() < logging.WARNING:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


@contextlib.contextmanager
def _tsfm_env():
    # tsfm_public reads this once, when it is first imported, for its logging.basicConfig
    if "tsfm_public" in sys.modules or _TSFM_LEVEL in os.environ:
        yield
        return
    os.environ[_TSFM_LEVEL] = "WARNING"
    try:
        yield
    finally:
        os.environ.pop(_TSFM_LEVEL, None)


@contextlib.contextmanager
def _no_progress_bars(modules):
    if "transformers" not in modules and "transformers" not in sys.modules:
        yield
        return
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
        from transformers.utils import logging as tf_logging
    except ImportError:  # the family's own error is clearer
        yield
        return
    tf_on, hub_on = tf_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
    tf_logging.disable_progress_bar()  # both switches: transformers' own and huggingface_hub's
    try:
        yield
    finally:
        if tf_on:
            tf_logging.enable_progress_bar()  # turns the hub's on too: put it back as it was next
        if hub_on:
            enable_progress_bars()
        else:
            disable_progress_bars()


@contextlib.contextmanager
def quiet_loading(modules=()):
    """Hold the libraries' progress bars and info logs back while a model is built.

    Args:
        modules: the top-level modules the family imports (its adapter's ``requires``).

    Example:
        >>> with quiet_loading(("transformers",)):     # doctest: +SKIP
        ...     model = PatchTSTForPrediction.from_pretrained(path)
    """
    with _tsfm_env(), _loggers_at_warning(), _no_progress_bars(tuple(modules)):
        yield
