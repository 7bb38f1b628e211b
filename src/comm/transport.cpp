#include "pipetrain/comm/transport.h"

#include <algorithm>
#include <sstream>

#include "comm_util.h"
#include "pipetrain/comm/inprocess.h"

namespace pipetrain {

// ---- headers ---------------------------------------------------------------------------------

MessageHeader MessageHeader::make(std::int64_t step, const Action& action, DType dtype,
                                  Shape shape) {
  PIPETRAIN_CHECK_ARG(is_comm(action.kind), "MessageHeader::make", "action ", to_string(action),
                      " is not a send or receive");
  MessageHeader header;
  header.step = step;
  header.stage = action.stage;
  header.microbatch = action.microbatch;
  header.kind = action.kind;
  header.dtype = dtype;
  header.nbytes = static_cast<std::uint64_t>(shape_numel(shape)) * dtype_size(dtype);
  header.shape = std::move(shape);
  return header;
}

MessageHeader MessageHeader::for_tensor(std::int64_t step, const Action& action,
                                        const Tensor& tensor) {
  return make(step, action, tensor.dtype(), tensor.shape());
}

std::string to_string(const MessageHeader& header) {
  std::ostringstream out;
  out << to_string(header.kind) << " stage " << header.stage << " microbatch "
      << header.microbatch << ' ' << shape_to_string(header.shape) << ' '
      << to_string(header.dtype);
  bool consistent = false;
  try {
    consistent = static_cast<std::uint64_t>(shape_numel(header.shape)) *
                     dtype_size(header.dtype) == header.nbytes;
  } catch (const Error&) {
  }
  if (!consistent) out << ' ' << header.nbytes << " bytes";
  out << " step " << header.step;
  return out.str();
}

Action peer_action(const Action& action) {
  switch (action.kind) {
    case ActionKind::kSendForward:
      return {action.stage + 1, ActionKind::kRecvForward, action.microbatch};
    case ActionKind::kRecvForward:
      return {action.stage - 1, ActionKind::kSendForward, action.microbatch};
    case ActionKind::kSendBackward:
      return {action.stage - 1, ActionKind::kRecvBackward, action.microbatch};
    case ActionKind::kRecvBackward:
      return {action.stage + 1, ActionKind::kSendBackward, action.microbatch};
    default:
      break;
  }
  throw InvalidArgument(
      detail::message("peer_action", "action ", to_string(action), " is not a send or receive"));
}

bool matches(const MessageHeader& sent, const MessageHeader& expected) {
  if (!sent.is_send() || !expected.is_recv()) return false;
  return peer_action(sent.action()) == expected.action() && sent.step == expected.step &&
         sent.dtype == expected.dtype && sent.shape == expected.shape &&
         sent.nbytes == expected.nbytes;
}

// ---- Transport -------------------------------------------------------------------------------

Transport::Transport(const TransportOptions& options) : timeout_(options.timeout) {
  PIPETRAIN_CHECK_ARG(options.timeout.count() > 0, "Transport", "timeout=",
                      options.timeout.count(), " ms must be > 0");
}

void Transport::set_timeout(std::chrono::milliseconds timeout) {
  PIPETRAIN_CHECK_ARG(timeout.count() > 0, "Transport::set_timeout", "timeout=", timeout.count(),
                      " ms must be > 0");
  timeout_ = timeout;
}

void Transport::run_group(const std::vector<CommOp>& ops) {
  for (const CommOp& op : ops) {
    PIPETRAIN_CHECK_ARG(op.header.is_send() || op.header.is_recv(), "Transport::run_group",
                        "operation ", to_string(op.header), " is neither a send nor a receive");
  }
  std::vector<Request> requests;
  requests.reserve(ops.size());
  for (const CommOp& op : ops) {
    if (op.header.is_send()) {
      requests.push_back(isend(op.peer, op.header, op.tensor));
    } else {
      Tensor destination = op.tensor;  // shares the caller's storage
      requests.push_back(irecv(op.peer, op.header, destination));
    }
  }
  wait_all(requests);
}

// ---- factory ---------------------------------------------------------------------------------

std::vector<std::string> transport_names() { return {"inprocess", "mpi", "nccl"}; }

namespace {
void check_name(std::string_view function, std::string_view name) {
  const auto names = transport_names();
  if (std::find(names.begin(), names.end(), name) != names.end()) return;
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  throw InvalidArgument(
      detail::message(function, "unknown transport '", name, "': expected one of ", list));
}
}  // namespace

bool is_available(std::string_view name) {
  check_name("is_available", name);
  if (name == "mpi") return detail::mpi_transport_built();
  if (name == "nccl") return detail::nccl_transport_built();
  return true;
}

std::unique_ptr<Transport> make_transport(std::string_view name,
                                          const TransportOptions& options) {
  check_name("make_transport", name);
  if (name == "mpi") return detail::make_mpi_transport(options);
  if (name == "nccl") return detail::make_nccl_transport(options);
  throw InvalidArgument(detail::message(
      "make_transport", "transport '", name,
      "' needs one Transport per rank in this process: use make_inprocess_world()"));
}

// ---- helpers ---------------------------------------------------------------------------------

namespace detail {

std::string format_ms(std::chrono::milliseconds ms) { return std::to_string(ms.count()) + " ms"; }

std::string ranks_to_string(const std::vector<int>& ranks) {
  std::string out = "[";
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(ranks[i]);
  }
  return out + "]";
}

void check_post(std::string_view function, int rank, int world_size, int peer,
                const MessageHeader& header, const Tensor& tensor, bool send, Device device) {
  PIPETRAIN_CHECK_ARG(peer >= 0 && peer < world_size, function, "peer ", peer,
                      " is out of range [0, ", world_size, ")");
  PIPETRAIN_CHECK_ARG(peer != rank, function, "peer ", peer, " is this rank");
  if (send) {
    PIPETRAIN_CHECK_ARG(header.is_send(), function, "header ", to_string(header),
                        " is not a SEND_F or SEND_B header");
  } else {
    PIPETRAIN_CHECK_ARG(header.is_recv(), function, "header ", to_string(header),
                        " is not a RECV_F or RECV_B header");
  }
  PIPETRAIN_CHECK_ARG(tensor.defined(), function, "tensor for ", to_string(header),
                      " is undefined");
  PIPETRAIN_CHECK_ARG(tensor.device() == device, function, "tensor for ", to_string(header),
                      " is on ", to_string(tensor.device()), ": this transport moves ",
                      device == Device::kCpu ? "host" : "CUDA", " memory only");
  PIPETRAIN_CHECK_ARG(tensor.dtype() == header.dtype && tensor.shape() == header.shape &&
                          tensor.nbytes() == header.nbytes,
                      function, "tensor ", shape_to_string(tensor.shape()), ' ',
                      to_string(tensor.dtype()), " does not match header ", to_string(header));
}

WireHeader encode_wire(const MessageHeader& header) {
  WireHeader wire;
  wire.step = header.step;
  wire.stage = header.stage;
  wire.microbatch = header.microbatch;
  wire.kind = static_cast<std::uint8_t>(header.kind);
  wire.dtype = static_cast<std::uint8_t>(header.dtype);
  wire.ndim = static_cast<std::uint8_t>(header.shape.size());
  std::copy(header.shape.begin(), header.shape.end(), wire.shape);
  wire.nbytes = header.nbytes;
  return wire;
}

MessageHeader decode_wire(const WireHeader& wire) {
  MessageHeader header;
  header.step = wire.step;
  header.stage = wire.stage;
  header.microbatch = wire.microbatch;
  header.kind = static_cast<ActionKind>(wire.kind);
  header.dtype = static_cast<DType>(wire.dtype);
  header.shape.assign(wire.shape, wire.shape + std::min<int>(wire.ndim, kMaxWireDims));
  header.nbytes = wire.nbytes;
  return header;
}

std::vector<int> check_group(std::string_view function, const std::vector<int>& group, int rank,
                             int world_size) {
  if (group.empty()) {
    std::vector<int> all(static_cast<std::size_t>(world_size));
    for (int r = 0; r < world_size; ++r) all[static_cast<std::size_t>(r)] = r;
    return all;
  }
  for (std::size_t i = 0; i < group.size(); ++i) {
    PIPETRAIN_CHECK_ARG(group[i] >= 0 && group[i] < world_size, function, "group ",
                        ranks_to_string(group), " holds rank ", group[i],
                        " outside [0, ", world_size, ")");
    PIPETRAIN_CHECK_ARG(i == 0 || group[i - 1] < group[i], function, "group ",
                        ranks_to_string(group), " must be sorted and distinct");
  }
  PIPETRAIN_CHECK_ARG(std::binary_search(group.begin(), group.end(), rank), function, "group ",
                      ranks_to_string(group), " must contain this rank ", rank);
  return group;
}

void check_reduce_tensor(std::string_view function, const Tensor& tensor) {
  PIPETRAIN_CHECK_ARG(tensor.defined(), function, "tensor is undefined");
  PIPETRAIN_CHECK_ARG(tensor.device() == Device::kCpu, function, "tensor is on ",
                      to_string(tensor.device()), ": this transport reduces host memory only");
}

std::string recv_mismatch(int rank, int peer, const MessageHeader& expected,
                          const MessageHeader& sent) {
  return "rank " + std::to_string(rank) + " expected " + to_string(expected) + " from rank " +
         std::to_string(peer) + ", got " + to_string(sent);
}

std::string send_mismatch(int rank, int peer, const MessageHeader& sent,
                          const MessageHeader& expected) {
  return "rank " + std::to_string(rank) + " sent " + to_string(sent) + " to rank " +
         std::to_string(peer) + ", which expected " + to_string(expected);
}

std::string describe_op(const MessageHeader& header, int peer) {
  return to_string(header) + (header.is_send() ? " to rank " : " from rank ") +
         std::to_string(peer);
}

}  // namespace detail
}  // namespace pipetrain
