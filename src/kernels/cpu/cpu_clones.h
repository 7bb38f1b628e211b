// cpu_clones.h (private): PIPETRAIN_CPU_CLONES, which compiles a function three times (AVX-512,
// AVX2 and the x86-64 baseline) and picks one when the library is loaded. A file that defines
// clones must be built with -ffp-contract=off (src/kernels/cpu/CMakeLists.txt), so that the
// AVX-512 clone, which may use FMA, does the same operations as the others.
#pragma once

// Runtime dispatch (GCC/Clang function multiversioning). Not under ThreadSanitizer: the clones'
// IFUNC resolver runs while the program is relocated, before the TSan runtime is set up, and
// every TSan binary then crashed at start.
#if defined(__SANITIZE_THREAD__)
#define PIPETRAIN_CPU_NO_CLONES 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PIPETRAIN_CPU_NO_CLONES 1
#endif
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__APPLE__) && \
    !defined(PIPETRAIN_CPU_NO_CLONES)
#define PIPETRAIN_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PIPETRAIN_CPU_CLONES
#endif
