#!/usr/bin/env bash
# Install every model package the `compress` model zoo adapts, beside the torch that is
# already in the venv (torch 2.13.0+cpu), without letting pip replace that torch.
#
# Usage:  PIP=.venv/bin/pip bash scripts/install_models.sh     (default PIP=.venv/bin/pip)
# Run it after `pip install torch==2.13.0 && pip install -e .`. Idempotent: a second run
# only re-checks the pins and the imports.
#
# Tested versions (Python 3.11, torch 2.13.0+cpu, torch-pruning 1.6.1, numpy 2.4.6,
# scipy 1.17.1; fresh venv with torch only: 85 s, venv 0.9 GB -> 2.1 GB):
#
# | package             | version | how        | note                                              |
# |---------------------|---------|------------|---------------------------------------------------|
# | transformers        | 5.24.0  | plain      | PatchTST, TimesFM 2.5 (TimesFm2_5*), T5           |
# | chronos-forecasting | 2.3.2   | plain      | Chronos-Bolt (torch<3); pulls accelerate 1.15.0   |
# | timesfm[torch]      | 3.0.2   | plain      | Google's TimesFM 2.5 and 3 torch classes          |
# |                     |         |            | (the adapter uses transformers' TimesFm2_5)       |
# | granite-tsfm        | 0.3.11  | --no-deps  | TTM; pins torch>=2.10,<2.12 (a CUDA torch 2.11)   |
# | momentfm            | 0.1.4   | --no-deps  | pins transformers 4.33.3, numpy 1.25.2, hf-hub    |
# |                     |         |            | 0.24.0; runs on transformers 5 / hf-hub 2.4.0     |
# | uni2ts              | 2.0.0   | --no-deps  | Moirai; pins torch<2.5, numpy~=1.26, scipy~=1.11, |
# |                     |         |            | gluonts~=0.14.3, einops 0.7, jaxtyping 0.2        |
# | gluonts             | 0.17.0  | --no-deps  | for uni2ts (imports fine; its deps added below)   |
# | pytorch-forecasting | 1.8.0   | plain      | foreign-forecaster tests (TimeXer, TFT blocks);   |
# |                     |         |            | pulls scikit-base 1.0.2                           |
# | scikit-learn        | 1.7.2   | dependency | granite-tsfm asks <1.8                            |
# | datasets            | 5.2.0   | dependency | granite-tsfm (uni2ts asks ~=2.17, unused here)    |
# | deprecated          | 1.3.1   | dependency | granite-tsfm                                      |
# | pandas              | 2.3.3   | dependency | gluonts asks <3, granite-tsfm >=2.3.3             |
# | einops              | 0.8.2   | dependency | chronos, granite-tsfm, uni2ts                     |
# | lightning           | 2.6.6   | dependency | uni2ts (MoiraiForecast is a LightningModule)      |
# | jaxtyping           | 0.3.11  | dependency | uni2ts type annotations                           |
# | jax[cpu]            | 0.10.2  | dependency | jaxtyping's PyTree imports jax                    |
# | hydra-core          | 1.3.8   | dependency | uni2ts (decodes the distribution config)          |
# | orjson 3.13.0, multiprocess 0.70.19, python-dotenv 1.2.4, pydantic 2.14.4,            |
# | toolz 0.12.1: dependencies of uni2ts / gluonts                                        |
#
# `pip check` afterwards lists only the pins above that are knowingly overridden, and
# uni2ts' tensorboard (only its training CLI uses it).
set -euo pipefail

PIP="${PIP:-.venv/bin/pip}"
PY="$(dirname "$PIP")/python"
[ -x "$PY" ] || PY=python

torch_version() { "$PY" -W ignore -c 'import torch; print(torch.__version__)'; }

if ! TORCH_BEFORE="$(torch_version 2>/dev/null)"; then
    echo "install_models: no torch in $PY; install it first: $PIP install torch==2.13.0" >&2
    exit 1
fi
echo "install_models: torch ${TORCH_BEFORE} (kept as is)"

# A constraint file that holds torch (and its CPU wheel tag) exactly where it is: pip may
# then never swap it for a CUDA build, whatever a package asks for.
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==${TORCH_BEFORE}" >"$CONSTRAINTS"

# 1. Packages whose pins accept torch 2.13, plus the real dependencies of the packages
#    installed without theirs in step 2 (one resolver run, so the set is consistent).
"$PIP" install --quiet -c "$CONSTRAINTS" \
    "transformers==5.24.0" \
    "chronos-forecasting==2.3.2" \
    "timesfm[torch]==3.0.2" \
    "pytorch-forecasting==1.8.0" \
    "scikit-learn==1.7.2" \
    "datasets==5.2.0" \
    "deprecated==1.3.1" \
    "urllib3>=1.26.19" \
    "pandas==2.3.3" \
    "einops==0.8.2" \
    "lightning==2.6.6" \
    "jaxtyping==0.3.11" \
    "jax[cpu]==0.10.2" \
    "hydra-core==1.3.8" \
    "orjson==3.13.0" "multiprocess==0.70.19" "python-dotenv==1.2.4" "pydantic==2.14.4" "toolz==0.12.1"

# 2. Packages whose pins reject torch 2.13 / transformers 5 / numpy 2: without their pins.
"$PIP" install --quiet --no-deps \
    "granite-tsfm==0.3.11" \
    "momentfm==0.1.4" \
    "uni2ts==2.0.0" \
    "gluonts==0.17.0"

TORCH_AFTER="$(torch_version)"
if [ "$TORCH_AFTER" != "$TORCH_BEFORE" ]; then
    echo "install_models: torch changed from ${TORCH_BEFORE} to ${TORCH_AFTER}" >&2
    exit 1
fi

# 3. Prove it: every family imports.
"$PY" - <<'EOF'
import importlib
checks = {
    "ttm": ("tsfm_public", "TinyTimeMixerForPrediction"),
    "patchtst": ("transformers", "PatchTSTForPrediction"),
    "timesfm (HF)": ("transformers", "TimesFmModelForPrediction"),
    "timesfm (HF 2.5)": ("transformers", "TimesFm2_5ModelForPrediction"),
    "timesfm 2.5": ("timesfm", "TimesFM_2p5_200M_torch"),
    "timesfm 3": ("timesfm3", "TimesFM3Torch"),
    "chronos_bolt": ("chronos.chronos_bolt", "ChronosBoltModelForForecasting"),
    "moment": ("momentfm", "MOMENTPipeline"),
    "moirai": ("uni2ts.model.moirai", "MoiraiModule"),
    "ptf (tests)": ("pytorch_forecasting.models.timexer._timexer_v2", "TimeXer"),
}
for family, (module, attr) in checks.items():
    getattr(importlib.import_module(module), attr)
    print(f"install_models: {family:13s} ok ({module}.{attr})")
EOF
echo "install_models: done (torch ${TORCH_AFTER})"
