// Link-time stub used when pipetrain is built without MPI: the same functions, nothing works.
#include <cstdlib>

#include "comm_util.h"
#include "pipetrain/build_info.h"
#include "pipetrain/comm/mpi.h"

namespace pipetrain {

namespace detail {
bool mpi_transport_built() { return false; }
std::unique_ptr<Transport> make_mpi_transport(const TransportOptions&) {
  require(Part::kMpi, "make_transport");
  return nullptr;  // not reached: require() throws in this build
}
}  // namespace detail

MpiSession::MpiSession(int*, char***, ThreadLevel) { require(Part::kMpi, "MpiSession"); }
MpiSession::~MpiSession() = default;
std::string MpiSession::failure() { return {}; }
void MpiSession::abort(int, std::string_view) noexcept { std::abort(); }  // never constructed

void mpi_abort_world(int) {
  require(Part::kMpi, "mpi_abort_world");
  throw NotBuiltError("[mpi_abort_world] pipetrain was built without MPI");
}

}  // namespace pipetrain
