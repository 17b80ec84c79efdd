#!/usr/bin/env bash
# Run the int8 kernel tests as an AVX2 processor without VNNI runs them: under qemu-user
# emulating a Haswell, onnxruntime picks its AVX2 u8s8 kernels (16-bit pair sums that 8-bit
# weights saturate) and torch reports no VNNI, so the weight width chosen is 7 bits.
#
# It runs the tests of what the integer kernels compute, node by node (-k kernels_compute):
# the rest of test_quantize*.py checks the files, the float arithmetic of the quantized graph
# (the same on every processor) and the kernels' outputs end to end. qemu runs about 50 times
# slower than the host: these four tests took 15 minutes under it on a 2-core Xeon, the whole
# file would take hours (pass -k '' for it; later pytest arguments override the default). Without qemu-x86_64 this
# says so and succeeds.
#
#   tests/export/run_under_avx2_emulation.sh [PYTEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v qemu-x86_64 >/dev/null; then
    echo "qemu-x86_64 not found: int8 tests under AVX2 emulation skipped"
    exit 0
fi
python="${PYTHON:-.venv/bin/python}"
# qemu warns once per CPUID feature its code generator lacks; those lines are noise here.
qemu-x86_64 -cpu Haswell-v4 "$python" -m pytest -q -p no:cacheprovider \
    tests/export/test_quantize.py tests/export/test_quantize_detectors.py -k kernels_compute "$@" \
    2> >(grep -v "TCG doesn't support requested feature" >&2)
