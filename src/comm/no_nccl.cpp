// Link-time stub for the NCCL transport, used when NCCL or MPI (its bootstrap) was not built;
// src/comm/nccl/ replaces it when both were.
#include "comm_util.h"
#include "pipetrain/build_info.h"

namespace pipetrain::detail {

bool nccl_transport_built() { return false; }

std::unique_ptr<Transport> make_nccl_transport(const TransportOptions&) {
  require(Part::kNccl, "make_transport");
  require(Part::kMpi, "make_transport");  // the NCCL transport bootstraps through MPI
  throw NotBuiltError("[make_transport] the NCCL transport was not built");  // unreachable
}

}  // namespace pipetrain::detail
