// Link-time stub for the NCCL transport: the name is known, the transport comes later. A build
// with NCCL will replace this file with src/comm/nccl/; until then require() decides.
#include "comm_util.h"
#include "pipetrain/build_info.h"

namespace pipetrain::detail {

bool nccl_transport_built() { return false; }

std::unique_ptr<Transport> make_nccl_transport(const TransportOptions&) {
  require(Part::kNccl, "make_transport");
  throw NotBuiltError(
      "[make_transport] the NCCL transport is not implemented yet in this version of pipetrain");
}

}  // namespace pipetrain::detail
