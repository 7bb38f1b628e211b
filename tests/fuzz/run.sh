#!/usr/bin/env bash
# tests/fuzz/run.sh [csv|checkpoint] [SECONDS] [BUILD_DIR]: builds a libFuzzer target with clang
# and runs it for SECONDS (default 300) with a 1 GB RSS limit, from its seed corpus in
# tests/fuzz/corpus/<target> (new inputs go to BUILD_DIR/corpus-<target>, crashes to
# BUILD_DIR/findings). Targets: csv (the schedule CSV loader, the default) and checkpoint (the
# stage-file, manifest and step-folder readers). Not run by CTest or CI. Needs clang and
# libFuzzer (Debian: apt-get install clang-14 libclang-rt-14-dev).
set -euo pipefail
target=csv
case "${1:-}" in csv|checkpoint) target=$1; shift ;; esac
seconds=${1:-300}
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${2:-$root/build-fuzz}
cxx=${CXX_FUZZ:-$(command -v clang++ || command -v clang++-14)}
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DPIPETRAIN_BUILD_FUZZ=ON -DPIPETRAIN_BUILD_TESTS=OFF -DPIPETRAIN_BUILD_EXAMPLES=OFF \
  -DPIPETRAIN_BUILD_BENCH=OFF -DPIPETRAIN_BUILD_TOOLS=OFF -DPIPETRAIN_WITH_CUDA=OFF \
  -DPIPETRAIN_WITH_NCCL=OFF -DPIPETRAIN_WITH_MPI=OFF > "$build.configure.log"
cmake --build "$build" --target "fuzz_$target" -j"${JOBS:-2}"
mkdir -p "$build/corpus-$target" "$build/findings"
cd "$build/findings"
exec "$build/tests/fuzz/fuzz_$target" "$build/corpus-$target" "$root/tests/fuzz/corpus/$target" \
  -max_total_time="$seconds" -rss_limit_mb=1024 -malloc_limit_mb=1024 -timeout=10 \
  -max_len=8192 -print_final_stats=1
