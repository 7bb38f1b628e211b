// Runs under mpiexec with 2 or 4 processes; every rank runs every test. Data is derived from
// the ranks (nccl-tests style) so each receiver knows what it must get.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "comm/mpi/mpi_check.h"
#include "pipetrain/build_info.h"
#include "pipetrain/comm/mpi.h"
#include "pipetrain/comm/transport.h"
#include "pipetrain/cuda/device.h"
#include "error_of.h"
#include "transport_payload.h"

namespace pipetrain {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using pipetrain::testing::error_of;

using pipetrain::testing::expect_payload;
using pipetrain::testing::make_header;
using pipetrain::testing::make_payload;

std::unique_ptr<Transport> new_transport(std::chrono::milliseconds timeout = 10s) {
  return make_transport("mpi", TransportOptions{timeout});
}

TEST(MpiTransport, Availability) {
  EXPECT_TRUE(is_built_with(Part::kMpi));
  EXPECT_TRUE(is_available("mpi"));
  // MPI is built, so NCCL is available exactly when it is built and a device is present.
  EXPECT_EQ(is_available("nccl"), is_built_with(Part::kNccl) && cuda_device_count() > 0);
}

TEST(MpiTransport, RankAndSize) {
  auto t = new_transport();
  int rank = -1;
  int size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  EXPECT_EQ(t->rank(), rank);
  EXPECT_EQ(t->world_size(), size);
  EXPECT_EQ(t->name(), "mpi");
}

// Ring exchange, several rounds, each rank sending to the next and receiving from the previous.
TEST(MpiTransport, RingPingPong) {
  auto t = new_transport();
  const int n = t->world_size();
  const int r = t->rank();
  const int next = (r + 1) % n;
  const int prev = (r + n - 1) % n;
  const Shape shape{7, 33};
  for (int round = 0; round < 10; ++round) {
    Tensor out = make_payload(r, next, round, shape);
    Tensor in = Tensor::zeros(shape);
    t->run_group(
        {{next, make_header(ActionKind::kSendForward, r, round, shape, round), out},
         {prev, make_header(ActionKind::kRecvForward, prev + 1, round, shape, round), in}});
    expect_payload(in, prev, r, round);
  }
  t->barrier();
}

// Several messages in flight between a pair are matched in posting order; a large payload too.
TEST(MpiTransport, InOrderMatchingAndLargePayload) {
  auto t = new_transport();
  const int r = t->rank();
  if (r > 1) {
    t->barrier();
    return;
  }
  const Shape small{16};
  const Shape large{512, 1024};  // 2 MiB: beyond the eager limit
  std::vector<Tensor> tensors;
  std::vector<Request> requests;
  for (int m = 0; m < 4; ++m) {
    const Shape& shape = m == 2 ? large : small;
    if (r == 0) {
      tensors.push_back(make_payload(0, 1, m, shape));
      requests.push_back(t->isend(1, make_header(ActionKind::kSendBackward, 3, m, shape),
                                  tensors.back()));
    } else {
      tensors.push_back(Tensor::zeros(shape));
      requests.push_back(t->irecv(0, make_header(ActionKind::kRecvBackward, 2, m, shape),
                                  tensors.back()));
    }
  }
  if (r == 1) {  // wait in reverse order
    for (int m = 3; m >= 0; --m) t->wait(requests[static_cast<std::size_t>(m)]);
    for (int m = 0; m < 4; ++m) expect_payload(tensors[static_cast<std::size_t>(m)], 0, 1, m);
  } else {
    t->wait_all(requests);
  }
  t->barrier();
}

TEST(MpiTransport, AllReduceWorldAndSubsets) {
  auto t = new_transport();
  const int n = t->world_size();
  const int r = t->rank();
  Tensor x = Tensor::empty({6});
  for (std::int64_t i = 0; i < 6; ++i) x.data<float>()[i] = static_cast<float>(r + 1) + i;
  t->all_reduce_sum(x);
  for (std::int64_t i = 0; i < 6; ++i) {
    EXPECT_EQ(x.data<float>()[i], static_cast<float>(n * (n + 1) / 2 + n * i));
  }
  // Pairs {0, 1}, {2, 3}: data parallel groups; then the even ranks (a tied-embedding group).
  const std::vector<int> pair{r - r % 2, r - r % 2 + 1};
  for (int round = 0; round < 3; ++round) {
    Tensor y = Tensor::from_vector(std::vector<double>{1.0 * r + round, -2.0 * r});
    t->all_reduce_sum(y, pair);
    EXPECT_EQ(y.to_vector<double>(),
              (std::vector<double>{1.0 * (pair[0] + pair[1]) + 2 * round,
                                   -2.0 * (pair[0] + pair[1])}));
  }
  if (n == 4 && r % 2 == 0) {
    Tensor z = Tensor::from_vector(std::vector<std::int32_t>{r, 1});
    t->all_reduce_sum(z, {0, 2});
    EXPECT_EQ(z.to_vector<std::int32_t>(), (std::vector<std::int32_t>{2, 2}));
  }
  Tensor h = Tensor::from_vector(std::vector<float>{0.5f * r}).to(DType::kBFloat16);
  t->all_reduce_sum(h);
  EXPECT_EQ(h.to_vector<float>(), (std::vector<float>{0.25f * n * (n - 1)}));
  EXPECT_EQ(error_of<InvalidArgument>([&] { t->all_reduce_sum(x, {n}); }),
            "[MpiTransport::all_reduce_sum] group [" + std::to_string(n) + "] holds rank " +
                std::to_string(n) + " outside [0, " + std::to_string(n) + ")");
  t->barrier();
}

// Rank 0 waits for a message rank 1 never sends; rank 1 waits in the barrier, then all exit.
TEST(MpiTransport, TimeoutWhenPeerNeverSends) {
  auto t = new_transport(200ms);
  if (t->rank() == 0) {
    Tensor in = Tensor::zeros({2, 3});
    Request q = t->irecv(1, make_header(ActionKind::kRecvForward, 1, 5, {2, 3}, 11), in);
    const auto start = Clock::now();
    EXPECT_EQ(error_of<TimeoutError>([&] { t->wait(q); }),
              "[MpiTransport::wait] rank 0 timed out after 200 ms waiting for RECV_F stage 1 "
              "microbatch 5 [2, 3] fp32 step 11 from rank 1");
    EXPECT_GE(Clock::now() - start, 200ms);
    // The session learns of it: it ends with MPI_Finalize only if every rank gets there.
    EXPECT_THAT(MpiSession::failure(), ::testing::HasSubstr("timed out"));
  }
  t->set_timeout(20s);
  t->barrier();
}

TEST(MpiTransport, MismatchIsReportedByTheReceiver) {
  auto t = new_transport();
  const Shape shape{4, 64};
  if (t->rank() == 0) {
    Tensor out = Tensor::zeros(shape);
    Request q = t->isend(1, make_header(ActionKind::kSendForward, 0, 2, shape), out);
    t->wait(q);  // small enough to leave eagerly
  } else if (t->rank() == 1) {
    Tensor in = Tensor::zeros(shape);
    Request q = t->irecv(0, make_header(ActionKind::kRecvForward, 1, 3, shape), in);
    EXPECT_EQ(error_of<MismatchError>([&] { t->wait(q); }),
              "[MpiTransport::wait] rank 1 expected RECV_F stage 1 microbatch 3 [4, 64] fp32 "
              "step 0 from rank 0, got SEND_F stage 0 microbatch 2 [4, 64] fp32 step 0");
  }
  t->barrier();
}

// Rank 0 aborts; every other rank is waiting for a message from it and gets the reason.
TEST(MpiTransport, AbortReachesWaitingPeers) {
  auto t = new_transport(20s);
  if (t->rank() == 0) {
    std::this_thread::sleep_for(100ms);
    t->abort("loss is NaN");
    EXPECT_TRUE(t->aborted());
    Tensor out = Tensor::zeros({1});
    EXPECT_EQ(error_of<AbortedError>([&] {
                t->isend(1, make_header(ActionKind::kSendForward, 0, 0, {1}), out);
              }),
              "[MpiTransport::isend] rank 0: the world was aborted by rank 0: loss is NaN");
  } else {
    Tensor in = Tensor::zeros({1});
    Request q = t->irecv(0, make_header(ActionKind::kRecvForward, 1, 0, {1}), in);
    const auto start = Clock::now();
    EXPECT_EQ(error_of<AbortedError>([&] { t->wait(q); }),
              "[MpiTransport::wait] rank " + std::to_string(t->rank()) +
                  ": the world was aborted by rank 0: loss is NaN");
    EXPECT_LT(Clock::now() - start, 10s);
  }
  MPI_Barrier(MPI_COMM_WORLD);  // the aborted transport can no longer synchronise
}

TEST(MpiTransport, ArgumentErrors) {
  auto t = new_transport();
  const int n = t->world_size();
  Tensor x = Tensor::zeros({1, 1, 1, 1, 1, 1, 1, 1, 1});
  const auto nine = make_header(ActionKind::kSendForward, 0, 0, x.shape());
  EXPECT_EQ(error_of<InvalidArgument>([&] { t->isend((t->rank() + 1) % n, nine, x); }),
            "[MpiTransport::isend] shape [1, 1, 1, 1, 1, 1, 1, 1, 1] has 9 dimensions; the MPI "
            "transport sends at most 8");
  EXPECT_EQ(error_of<InvalidArgument>([&] { t->isend(n, nine, x); }),
            "[MpiTransport::isend] peer " + std::to_string(n) + " is out of range [0, " +
                std::to_string(n) + ")");
}

TEST(MpiCheck, ThrowsWithCallErrorAndLocation) {
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int value = 0;
  const std::string text = error_of<CommError>(
      [&] { PIPETRAIN_MPI_CHECK(MPI_Send(&value, 1, MPI_INT, 9999, 0, MPI_COMM_WORLD)); });
  EXPECT_THAT(text, ::testing::StartsWith(
                        "[mpi] rank " + std::to_string(rank) +
                        ": MPI_Send(&value, 1, MPI_INT, 9999, 0, MPI_COMM_WORLD) failed: "));
  EXPECT_THAT(text, ::testing::HasSubstr("MPI_ERR_RANK"));
  EXPECT_THAT(text, ::testing::MatchesRegex(".*\\(tests/mpi/test_mpi_transport\\.cpp:[0-9]+\\)"));
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
}

// The file shown in messages does not depend on where the repository was cloned (a checkout
// under /home/me/src/ once showed "src/pipetrain/tests/...").
TEST(MpiCheck, ShownPathIsRelativeToTheProject) {
  using detail::shown_source_path;
  EXPECT_STREQ(shown_source_path("/home/me/src/pipetrain/src/comm/mpi/mpi_transport.cpp"),
               "src/comm/mpi/mpi_transport.cpp");
  EXPECT_STREQ(shown_source_path("/src/pipetrain/tests/mpi/test_mpi_transport.cpp"),
               "tests/mpi/test_mpi_transport.cpp");
  EXPECT_STREQ(shown_source_path("/ci/tests/pipetrain/src/comm/mpi/mpi_session.cpp"),
               "src/comm/mpi/mpi_session.cpp");
  EXPECT_STREQ(shown_source_path("src/comm/mpi/mpi_session.cpp"), "src/comm/mpi/mpi_session.cpp");
  EXPECT_STREQ(shown_source_path("/opt/mysrc/file.cpp"), "/opt/mysrc/file.cpp");
  EXPECT_STREQ(shown_source_path(__FILE__), "tests/mpi/test_mpi_transport.cpp");
}

TEST(MpiSession, NestedSessionDoesNotOwnMpi) {
  MpiSession inner;
  EXPECT_FALSE(inner.owns_mpi());
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  EXPECT_EQ(inner.rank(), rank);
}

}  // namespace
}  // namespace pipetrain

namespace {
// Prints a failure of a rank other than 0, prefixed by the rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::printf("[rank %d] %s:%d: Failure\n%s\n", rank_,
                result.file_name() ? result.file_name() : "?", result.line_number(),
                result.message());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed()) {
      std::printf("[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
    }
  }

 private:
  int rank_;
};
}  // namespace

int main(int argc, char** argv) {
  pipetrain::MpiSession session(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  // Only rank 0 prints the progress lines; the other ranks print their failures.
  if (session.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(session.rank()));
  }
  const int result = RUN_ALL_TESTS();
  return result;
}
