// pipetrain/build_info.h: which optional parts this build of pipetrain has.
//
// Every part of the public API compiles in every build. Asking at run time for a part that was
// not built (a CUDA tensor, the NCCL or MPI transport) throws NotBuiltError naming the CMake
// option that builds it.
#pragma once

#include <string>
#include <string_view>

namespace pipetrain {

enum class Part { kCuda, kNccl, kMpi };

/// "CUDA", "NCCL", "MPI".
std::string_view to_string(Part part);

/// True when this build of the library contains `part`.
bool is_built_with(Part part);

/// Does nothing when `part` was built; otherwise throws NotBuiltError:
///   "[<what>] pipetrain was built without NCCL: reconfigure with -DPIPETRAIN_WITH_NCCL=ON"
void require(Part part, std::string_view what);

/// The library version ("0.1.0") and a one-line summary of the parts built.
std::string version();
std::string build_summary();

}  // namespace pipetrain
