#!/usr/bin/env bash
# tests/fuzz/run.sh [SECONDS] [BUILD_DIR]: builds the libFuzzer targets with clang and runs the
# CSV loader's for SECONDS (default 300) with a 1 GB RSS limit, from the seed corpus in
# tests/fuzz/corpus/csv (new inputs go to BUILD_DIR/corpus-csv, crashes to BUILD_DIR/findings).
# Not run by CTest or CI. Needs clang and libFuzzer (Debian: apt-get install clang-14
# libclang-rt-14-dev).
set -euo pipefail
seconds=${1:-300}
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${2:-$root/build-fuzz}
cxx=${CXX_FUZZ:-$(command -v clang++ || command -v clang++-14)}
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DPIPETRAIN_BUILD_FUZZ=ON -DPIPETRAIN_BUILD_TESTS=OFF -DPIPETRAIN_BUILD_EXAMPLES=OFF \
  -DPIPETRAIN_BUILD_BENCH=OFF -DPIPETRAIN_BUILD_TOOLS=OFF -DPIPETRAIN_WITH_CUDA=OFF \
  -DPIPETRAIN_WITH_NCCL=OFF -DPIPETRAIN_WITH_MPI=OFF > "$build.configure.log"
cmake --build "$build" --target fuzz_csv -j"${JOBS:-2}"
mkdir -p "$build/corpus-csv" "$build/findings"
cd "$build/findings"
exec "$build/tests/fuzz/fuzz_csv" "$build/corpus-csv" "$root/tests/fuzz/corpus/csv" \
  -max_total_time="$seconds" -rss_limit_mb=1024 -malloc_limit_mb=1024 -timeout=10 \
  -max_len=8192 -print_final_stats=1
