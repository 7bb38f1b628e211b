// Private helpers shared by the transports (not installed).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pipetrain/comm/transport.h"

namespace pipetrain::detail {

/// "50 ms".
std::string format_ms(std::chrono::milliseconds ms);
/// "[0, 2]".
std::string ranks_to_string(const std::vector<int>& ranks);

/// Checks the arguments of isend (send=true) or irecv: peer range, header direction, tensor
/// defined, on `device` (the memory the transport moves) and agreeing with the header. Throws
/// InvalidArgument naming `function`.
void check_post(std::string_view function, int rank, int world_size, int peer,
                const MessageHeader& header, const Tensor& tensor, bool send,
                Device device = Device::kCpu);

/// Most dimensions a header carries between processes.
inline constexpr int kMaxWireDims = 8;

/// A MessageHeader as fixed-size bytes, sent between processes of one build (MPI, NCCL).
struct WireHeader {
  std::int64_t step = 0;
  std::int32_t stage = 0;
  std::int32_t microbatch = 0;
  std::uint8_t kind = 0;
  std::uint8_t dtype = 0;
  std::uint8_t ndim = 0;
  std::uint8_t pad[5] = {};
  std::int64_t shape[kMaxWireDims] = {};
  std::uint64_t nbytes = 0;
};

/// The header's bytes; the caller has checked shape.size() <= kMaxWireDims.
WireHeader encode_wire(const MessageHeader& header);
MessageHeader decode_wire(const WireHeader& wire);

/// Checks and normalises an all-reduce group: empty means every rank; otherwise sorted,
/// distinct, in range and holding `rank`. Throws InvalidArgument naming `function`.
std::vector<int> check_group(std::string_view function, const std::vector<int>& group, int rank,
                             int world_size);

/// Checks the all-reduce tensor (defined, CPU). Throws InvalidArgument naming `function`.
void check_reduce_tensor(std::string_view function, const Tensor& tensor);

/// "rank 1 expected <expected> from rank 0, got <sent>".
std::string recv_mismatch(int rank, int peer, const MessageHeader& expected,
                          const MessageHeader& sent);
/// "rank 0 sent <sent> to rank 1, which expected <expected>".
std::string send_mismatch(int rank, int peer, const MessageHeader& sent,
                          const MessageHeader& expected);
/// "<header> from rank 1" for a receive, "<header> to rank 1" for a send.
std::string describe_op(const MessageHeader& header, int peer);

// Backends, chosen at link time: src/comm/mpi/*.cpp or src/comm/no_mpi.cpp, and
// src/comm/nccl/*.cpp (with NCCL and MPI) or src/comm/no_nccl.cpp. For NCCL, "built" means
// usable here: built and a CUDA device present.
bool mpi_transport_built();
std::unique_ptr<Transport> make_mpi_transport(const TransportOptions& options);
bool nccl_transport_built();
std::unique_ptr<Transport> make_nccl_transport(const TransportOptions& options);

}  // namespace pipetrain::detail
