// The NCCL transport under mpiexec, 2 processes (label gpu: CI has no GPU and never runs it).
// Every rank runs every test; data is derived from the ranks so each receiver knows what it
// must get. When the node has fewer GPUs than processes (one GPU: the usual test machine),
// main() gives each rank its own NCCL_HOSTID, so that NCCL sees distinct hosts and moves the
// data over sockets instead of refusing two ranks on one device; ctest sets
// NCCL_SOCKET_IFNAME=lo and NCCL_IB_DISABLE=1 for that case.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "pipetrain/build_info.h"
#include "pipetrain/comm/mpi.h"
#include "pipetrain/comm/transport.h"
#include "pipetrain/cuda/device.h"
#include "error_of.h"
#include "transport_payload.h"

namespace pipetrain {
namespace {

using namespace std::chrono_literals;

using pipetrain::testing::error_of;

using pipetrain::testing::expect_payload;
using pipetrain::testing::make_header;

// A CUDA tensor holding expected_value(from, to, message, i).
Tensor make_payload(int from, int to, int message, const Shape& shape) {
  return pipetrain::testing::make_payload(from, to, message, shape, Device::kCuda);
}

Tensor cuda_zeros(const Shape& shape, DType dtype = DType::kFloat32) {
  return Tensor::zeros(shape, dtype, Device::kCuda);
}

std::unique_ptr<Transport> new_transport(std::chrono::milliseconds timeout = 20s) {
  return make_transport("nccl", TransportOptions{timeout});
}

TEST(NcclTransport, RankSizeAndName) {
  auto t = new_transport();
  int rank = -1;
  int size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  EXPECT_TRUE(is_available("nccl"));
  EXPECT_EQ(t->rank(), rank);
  EXPECT_EQ(t->world_size(), size);
  EXPECT_EQ(t->name(), "nccl");
}

// Each rank sends to the next and receives from the previous: both in one group, which
// deadlocks unless the transport launches them as one NCCL group.
TEST(NcclTransport, RingPingPong) {
  auto t = new_transport();
  const int n = t->world_size();
  const int r = t->rank();
  const int next = (r + 1) % n;
  const int prev = (r + n - 1) % n;
  const Shape shape{7, 33};
  for (int round = 0; round < 10; ++round) {
    Tensor out = make_payload(r, next, round, shape);
    Tensor in = cuda_zeros(shape);
    t->run_group({{next, make_header(ActionKind::kSendForward, r, round, shape), out},
                  {prev, make_header(ActionKind::kRecvForward, prev + 1, round, shape), in}});
    expect_payload(in, prev, r, round);
  }
}

// Several messages to one peer in one group arrive in posting order.
TEST(NcclTransport, OrderedMessagesToOnePeer) {
  auto t = new_transport();
  const int r = t->rank();
  const Shape shape{4, 5};
  if (r == 0) {
    std::vector<Tensor> out;
    std::vector<Request> requests;
    for (int m = 0; m < 3; ++m) out.push_back(make_payload(0, 1, m, shape));
    for (int m = 0; m < 3; ++m) {
      requests.push_back(t->isend(1, make_header(ActionKind::kSendForward, 0, m, shape), out[m]));
    }
    t->wait_all(requests);
    for (const Request& request : requests) EXPECT_FALSE(request.valid());
  } else if (r == 1) {
    std::vector<Tensor> in;
    std::vector<Request> requests;
    for (int m = 0; m < 3; ++m) in.push_back(cuda_zeros(shape));
    for (int m = 0; m < 3; ++m) {
      requests.push_back(t->irecv(0, make_header(ActionKind::kRecvForward, 1, m, shape), in[m]));
    }
    t->wait_all(requests);
    for (int m = 0; m < 3; ++m) expect_payload(in[static_cast<std::size_t>(m)], 0, 1, m);
  }
  t->barrier();
}

TEST(NcclTransport, MismatchIsReportedByTheReceiver) {
  auto t = new_transport();
  const int r = t->rank();
  const Shape shape{2, 3};
  if (r == 0) {
    Tensor out = make_payload(0, 1, 2, shape);
    Request request = t->isend(1, make_header(ActionKind::kSendForward, 0, 2, shape), out);
    t->wait(request);
  } else if (r == 1) {
    Tensor in = cuda_zeros(shape);
    Request request = t->irecv(0, make_header(ActionKind::kRecvForward, 1, 3, shape), in);
    EXPECT_EQ(error_of<MismatchError>([&] { t->wait(request); }),
              "[NcclTransport::wait] rank 1 expected RECV_F stage 1 microbatch 3 [2, 3] fp32 "
              "step 0 from rank 0, got SEND_F stage 0 microbatch 2 [2, 3] fp32 step 0");
  }
  t->barrier();
}

TEST(NcclTransport, RejectsHostTensors) {
  auto t = new_transport();
  const int peer = (t->rank() + 1) % t->world_size();
  const Shape shape{2, 3};
  Tensor host = Tensor::zeros(shape);
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              t->isend(peer, make_header(ActionKind::kSendForward, 0, 0, shape), host);
            }),
            "[NcclTransport::isend] tensor for SEND_F stage 0 microbatch 0 [2, 3] fp32 step 0 "
            "is on cpu: this transport moves CUDA memory only");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              t->irecv(peer, make_header(ActionKind::kRecvForward, 1, 0, shape), host);
            }),
            "[NcclTransport::irecv] tensor for RECV_F stage 1 microbatch 0 [2, 3] fp32 step 0 "
            "is on cpu: this transport moves CUDA memory only");
  EXPECT_EQ(error_of<InvalidArgument>([&] { t->all_reduce_sum(host); }),
            "[NcclTransport::all_reduce_sum] tensor is on cpu: the NCCL transport reduces CUDA "
            "memory only");
}

// Element i of rank r holds (r + 1) + i / 4: the sum over n ranks is n(n+1)/2 + n * i / 4,
// exact in fp32 and in bf16 for these sizes.
Tensor rank_values(int r, std::int64_t count, DType dtype) {
  Tensor host = Tensor::empty({count});
  float* p = host.data<float>();
  for (std::int64_t i = 0; i < count; ++i) p[i] = static_cast<float>(r + 1) + 0.25f * (i % 8);
  return host.to(dtype).to(Device::kCuda);
}

void expect_sum(const Tensor& t, int n) {
  const std::vector<float> values = t.to_vector<float>();
  for (std::size_t i = 0; i < values.size(); ++i) {
    const float expected =
        static_cast<float>(n * (n + 1) / 2) + static_cast<float>(n) * 0.25f * (i % 8);
    ASSERT_EQ(values[i], expected) << "element " << i;
  }
}

TEST(NcclTransport, AllReduceFp32AndBf16) {
  auto t = new_transport();
  const int n = t->world_size();
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    Tensor x = rank_values(t->rank(), 1000, dtype);
    t->all_reduce_sum(x);
    EXPECT_EQ(x.dtype(), dtype);
    expect_sum(x, n);
  }
}

// A group of one rank goes through a group communicator (made by its members only) and leaves
// the values unchanged; then the whole world again, on the same transport.
TEST(NcclTransport, AllReduceOverGroups) {
  auto t = new_transport();
  Tensor x = rank_values(t->rank(), 64, DType::kFloat32);
  t->all_reduce_sum(x, {t->rank()});
  t->all_reduce_sum(x, {t->rank()});  // cached communicator
  const std::vector<float> values = x.to_vector<float>();
  for (std::size_t i = 0; i < values.size(); ++i) {
    ASSERT_EQ(values[i], static_cast<float>(t->rank() + 1) + 0.25f * (i % 8));
  }
  t->all_reduce_sum(x);
  expect_sum(x, t->world_size());
  t->barrier();
}

// Rank 0 waits for a message rank 1 never sends: TimeoutError, then AbortedError for later
// calls. The connection is made first, so that the late receive is only a stuck kernel.
TEST(NcclTransport, TimeoutAbortsTheCommunicator) {
  auto t = new_transport(500ms);
  const int r = t->rank();
  const Shape shape{3};
  if (r <= 1) {  // stage r: rank 0 sends forward and receives backward, rank 1 the reverse
    const int peer = 1 - r;
    Tensor out = make_payload(r, peer, 0, shape);
    Tensor in = cuda_zeros(shape);
    const ActionKind send = r == 0 ? ActionKind::kSendForward : ActionKind::kSendBackward;
    const ActionKind recv = r == 0 ? ActionKind::kRecvBackward : ActionKind::kRecvForward;
    t->run_group({{peer, make_header(send, r, 0, shape), out},
                  {peer, make_header(recv, r, 0, shape), in}});
    expect_payload(in, peer, r, 0);
  }
  if (r == 0) {
    Tensor in = cuda_zeros(shape);
    Request request = t->irecv(1, make_header(ActionKind::kRecvForward, 1, 5, shape), in);
    EXPECT_EQ(error_of<TimeoutError>([&] { t->wait(request); }),
              "[NcclTransport::wait] rank 0 timed out after 500 ms waiting for RECV_F stage 1 "
              "microbatch 5 [3] fp32 step 0 from rank 1");
    EXPECT_TRUE(t->aborted());
    EXPECT_EQ(error_of<AbortedError>([&] { t->barrier(); }),
              "[NcclTransport::barrier] rank 0: the world was aborted by rank 0: rank 0 timed "
              "out after 500 ms waiting for RECV_F stage 1 microbatch 5 [3] fp32 step 0 from "
              "rank 1");
  }
  // Rank 1 must keep its communicator until rank 0 has timed out: destroying it earlier closes
  // the connection under rank 0's pending receive, which NCCL then reports as ncclRemoteError
  // instead of letting the deadline fire.
  MPI_Barrier(MPI_COMM_WORLD);
  t.reset();
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(NcclTransport, AbortMakesLaterCallsThrow) {
  auto t = new_transport();
  t->abort("test abort");
  t->abort("second reason is ignored");
  EXPECT_TRUE(t->aborted());
  const int r = t->rank();
  EXPECT_EQ(error_of<AbortedError>([&] { t->barrier(); }),
            "[NcclTransport::barrier] rank " + std::to_string(r) +
                ": the world was aborted by rank " + std::to_string(r) + ": test abort");
  t.reset();
  MPI_Barrier(MPI_COMM_WORLD);
}

// ctest -L gpu on a machine without a GPU skips every test rather than failing them.
class RequireDevice : public ::testing::Environment {
 public:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << cuda_unavailable_reason();
  }
};

}  // namespace
}  // namespace pipetrain

int main(int argc, char** argv) {
  pipetrain::MpiSession session(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new pipetrain::RequireDevice);
  // NCCL refuses two ranks on one GPU; distinct host ids make it treat them as two hosts.
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int local_size = 1;
  MPI_Comm_size(node, &local_size);
  MPI_Comm_free(&node);
  if (pipetrain::cuda_device_count() < local_size) {
    const std::string id = "pipetrain-test-rank-" + std::to_string(session.rank());
    setenv("NCCL_HOSTID", id.c_str(), /*overwrite=*/1);
  }
  return RUN_ALL_TESTS();
}
