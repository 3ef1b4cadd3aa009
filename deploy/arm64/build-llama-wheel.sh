#!/bin/sh
# Cross-build llama-cpp-python (the version pyproject.toml pins) as an aarch64 wheel on an
# x86-64 Debian/Ubuntu machine, for one ARM CPU target:
#
#   deploy/arm64/build-llama-wheel.sh armv8-a            OUT_DIR   # Pi 3/4: Cortex-A53/A72
#   deploy/arm64/build-llama-wheel.sh armv8.2-a+dotprod  OUT_DIR   # Pi 5: Cortex-A76
#
# Debian's cross toolchain does the compiling (`make arm64-toolchain` installs it);
# nothing runs under emulation. llama.cpp's CPU backend repacks Q4_0/Q8_0 weights for
# ARM at load time (GGML_CPU_REPACK). The multimodal library is left out (the agent
# serves text). The wheel is tagged linux_aarch64 through _PYTHON_HOST_PLATFORM.
set -eu
ARCH=$1
OUT=$2
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
VERSION=$(sed -n 's/^ *"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$ROOT/pyproject.toml" | head -1)
command -v aarch64-linux-gnu-g++ >/dev/null || {
    echo "build-llama-wheel.sh: no aarch64-linux-gnu-g++: run make arm64-toolchain" >&2
    exit 1
}
mkdir -p "$OUT"
export CMAKE_ARGS="-DCMAKE_TOOLCHAIN_FILE=$HERE/aarch64-toolchain.cmake -DGGML_NATIVE=OFF \
-DGGML_CPU_ARM_ARCH=$ARCH -DGGML_CPU_REPACK=ON -DGGML_OPENMP=ON -DLLAVA_BUILD=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF"
export _PYTHON_HOST_PLATFORM=linux-aarch64
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
# --no-cache-dir: never reuse (or leave behind) a wheel pip would think is for this host
"$PYTHON" -m pip wheel --quiet --no-deps --no-cache-dir --no-binary llama-cpp-python \
    "llama-cpp-python==$VERSION" -w "$OUT"
WHEEL=$(ls "$OUT"/llama_cpp_python-"$VERSION"-*linux_aarch64.whl)
# the shared library inside must be for the Pi, not for this machine
"$PYTHON" - "$WHEEL" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    libs = [n for n in wheel.namelist() if n.endswith("libllama.so")]
    assert libs, "no libllama.so in the wheel"
    header = wheel.read(libs[0])[:20]
    machine = int.from_bytes(header[18:20], "little")
    assert header[:4] == b"\x7fELF" and machine == 183, f"libllama.so is not aarch64 (e_machine {machine})"
print(f"{sys.argv[1]}: aarch64 ELF inside")
PY
