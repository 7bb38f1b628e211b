#include "pipetrain/build_info.h"

#include "pipetrain/error.h"

namespace pipetrain {

std::string_view to_string(Part part) {
  switch (part) {
    case Part::kCuda: return "CUDA";
    case Part::kNccl: return "NCCL";
    case Part::kMpi: return "MPI";
  }
  return "?";
}

bool is_built_with(Part part) {
  switch (part) {
    case Part::kCuda: return PIPETRAIN_HAVE_CUDA;
    case Part::kNccl: return PIPETRAIN_HAVE_NCCL;
    case Part::kMpi: return PIPETRAIN_HAVE_MPI;
  }
  return false;
}

void require(Part part, std::string_view what) {
  if (is_built_with(part)) return;
  throw NotBuiltError(detail::message(what, "pipetrain was built without ", to_string(part),
                                      ": reconfigure with -DPIPETRAIN_WITH_", to_string(part),
                                      "=ON (and install it)"));
}

std::string version() { return PIPETRAIN_VERSION; }

std::string build_summary() {
  std::string summary = "pipetrain " + version() + " (";
  const Part parts[] = {Part::kCuda, Part::kNccl, Part::kMpi};
  for (std::size_t i = 0; i < 3; ++i) {
    if (i) summary += ", ";
    summary += std::string(to_string(parts[i])) + (is_built_with(parts[i]) ? " yes" : " no");
  }
  return summary + ")";
}

}  // namespace pipetrain
