#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <functional>
#include <thread>

#include "pipetrain/comm/inprocess.h"
#include "error_of.h"
#include "transport_payload.h"

namespace pipetrain {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using pipetrain::testing::error_of;

// Runs fn(transport) on one thread per rank; returns each rank's error text ("" when none).
std::vector<std::string> run_world(std::vector<std::unique_ptr<Transport>>& world,
                                   const std::function<void(Transport&)>& fn) {
  std::vector<std::string> errors(world.size());
  std::vector<std::thread> threads;
  for (std::size_t r = 0; r < world.size(); ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(*world[r]);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

using pipetrain::testing::expect_payload;
using pipetrain::testing::make_payload;

// Under mpirun -n 2 every process would run the whole in-process world: refused, saying why.
TEST(InProcessWorld, RefusesSeveralProcessesOfAnMpiLauncher) {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"}) {
    if (std::getenv(v) != nullptr) GTEST_SKIP() << "run under an MPI launcher (" << v << ")";
  }
  EXPECT_EQ(mpi_launcher_world().size, 1);
  ::setenv("PMI_SIZE", "1", 1);  // one process: allowed
  EXPECT_EQ(make_inprocess_world(2).size(), 2u);
  ::setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  EXPECT_EQ(mpi_launcher_world().size, 2);
  EXPECT_EQ(error_of<InvalidArgument>([] { make_inprocess_world(2); }),
            "[make_inprocess_world] this process is one of 2 started by an MPI launcher "
            "(OMPI_COMM_WORLD_SIZE=2), but an in-process world runs every rank as a thread of "
            "one process, so each process would run the whole job: use the MPI transport "
            "(make_transport(\"mpi\")) or start a single process");
  ::unsetenv("OMPI_COMM_WORLD_SIZE");
  ::unsetenv("PMI_SIZE");
}

MessageHeader header(const char* action, const Shape& shape, std::int64_t step = 0) {
  return MessageHeader::make(step, parse_action(action), DType::kFloat32, shape);
}

MessageHeader send_header(int stage, int microbatch, const Shape& shape) {
  return MessageHeader::make(0, {stage, ActionKind::kSendForward, microbatch}, DType::kFloat32,
                             shape);
}
MessageHeader recv_header(int stage, int microbatch, const Shape& shape) {
  return MessageHeader::make(0, {stage, ActionKind::kRecvForward, microbatch}, DType::kFloat32,
                             shape);
}

class RingPingPong : public ::testing::TestWithParam<int> {};

// Every rank sends to the next rank and receives from the previous one, several rounds.
TEST_P(RingPingPong, EveryReceiverGetsItsData) {
  const int n = GetParam();
  auto world = make_inprocess_world(n, TransportOptions{10s});
  const Shape shape{3, 17};
  const auto errors = run_world(world, [&](Transport& t) {
    const int r = t.rank();
    const int next = (r + 1) % n;
    const int prev = (r + n - 1) % n;
    for (int round = 0; round < 5; ++round) {
      Tensor out = make_payload(r, next, round, shape);
      Tensor in = Tensor::zeros(shape);
      // Stage r sends SEND_F of stage r; its receiver runs stage r + 1.
      std::vector<Request> requests;
      requests.push_back(t.isend(next, send_header(r, round, shape), out));
      requests.push_back(t.irecv(prev, recv_header(prev + 1, round, shape), in));
      t.wait_all(requests);
      for (const Request& q : requests) EXPECT_FALSE(q.valid());
      expect_payload(in, prev, r, round);
    }
  });
  for (int r = 0; r < n; ++r) EXPECT_EQ(errors[static_cast<std::size_t>(r)], "") << "rank " << r;
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, RingPingPong, ::testing::Values(2, 3, 4));

TEST(InProcessTransport, PingPongBothWays) {
  auto world = make_inprocess_world(2, TransportOptions{10s});
  const Shape shape{64};
  const auto errors = run_world(world, [&](Transport& t) {
    const int peer = 1 - t.rank();
    for (int m = 0; m < 20; ++m) {
      Tensor buffer = Tensor::zeros(shape);
      if ((m % 2) == t.rank()) {
        Tensor out = make_payload(t.rank(), peer, m, shape);
        Request q = t.isend(peer, header("0SEND_F0", shape, m), out);
        t.wait(q);
        EXPECT_FALSE(q.valid());
      } else {
        Request q = t.irecv(peer, header("1RECV_F0", shape, m), buffer);
        t.wait(q);
        expect_payload(buffer, peer, t.rank(), m);
      }
    }
  });
  EXPECT_EQ(errors, (std::vector<std::string>{"", ""}));
}

// The k-th send pairs with the k-th receive, whatever order the receiver waits in.
TEST(InProcessTransport, MatchesInPostingOrder) {
  auto world = make_inprocess_world(2);
  Transport& a = *world[0];
  Transport& b = *world[1];
  const Shape shape{8};
  std::vector<Tensor> outs;
  std::vector<Tensor> ins;
  std::vector<Request> sends;
  std::vector<Request> recvs;
  for (int m = 0; m < 5; ++m) {
    ins.push_back(Tensor::zeros(shape));
    recvs.push_back(b.irecv(0, recv_header(1, m, shape), ins.back()));
  }
  for (int m = 0; m < 5; ++m) {
    outs.push_back(make_payload(0, 1, m, shape));
    sends.push_back(a.isend(1, send_header(0, m, shape), outs.back()));
  }
  for (int m = 4; m >= 0; --m) {
    b.wait(recvs[static_cast<std::size_t>(m)]);
    expect_payload(ins[static_cast<std::size_t>(m)], 0, 1, m);
  }
  a.wait_all(sends);
}

TEST(InProcessTransport, TestPollsWithoutBlocking) {
  auto world = make_inprocess_world(2);
  const Shape shape{4};
  Tensor in = Tensor::zeros(shape);
  Request r = world[1]->irecv(0, recv_header(1, 0, shape), in);
  EXPECT_FALSE(world[1]->test(r));
  EXPECT_TRUE(r.valid());
  Tensor out = make_payload(0, 1, 0, shape);
  Request s = world[0]->isend(1, send_header(0, 0, shape), out);
  EXPECT_TRUE(world[1]->test(r));
  EXPECT_FALSE(r.valid());
  expect_payload(in, 0, 1, 0);
  EXPECT_TRUE(world[0]->test(s));
}

TEST(InProcessTransport, HeaderMismatchNamesBothSides) {
  auto world = make_inprocess_world(2);
  const Shape shape{4, 64};
  Tensor out = Tensor::zeros(shape);
  Tensor in = Tensor::zeros(shape);
  Request s = world[0]->isend(1, send_header(0, 2, shape), out);
  Request r = world[1]->irecv(0, recv_header(1, 3, shape), in);
  EXPECT_EQ(error_of<MismatchError>([&] { world[1]->wait(r); }),
            "[InProcessTransport::wait] rank 1 expected RECV_F stage 1 microbatch 3 [4, 64] fp32 "
            "step 0 from rank 0, got SEND_F stage 0 microbatch 2 [4, 64] fp32 step 0");
  EXPECT_EQ(error_of<MismatchError>([&] { world[0]->wait(s); }),
            "[InProcessTransport::wait] rank 0 sent SEND_F stage 0 microbatch 2 [4, 64] fp32 "
            "step 0 to rank 1, which expected RECV_F stage 1 microbatch 3 [4, 64] fp32 step 0");
}

TEST(InProcessTransport, ShapeAndStepMismatch) {
  auto world = make_inprocess_world(2);
  Tensor out = Tensor::zeros({2, 3});
  Tensor in = Tensor::zeros({3, 2});
  Request s = world[0]->isend(1, header("0SEND_B1", {2, 3}, 4), out);
  Request r = world[1]->irecv(0, header("1RECV_B1", {3, 2}, 5), in);
  EXPECT_EQ(error_of<MismatchError>([&] { world[1]->wait(r); }),
            "[InProcessTransport::wait] rank 1 expected RECV_B stage 1 microbatch 1 [3, 2] fp32 "
            "step 5 from rank 0, got SEND_B stage 0 microbatch 1 [2, 3] fp32 step 4");
  EXPECT_THROW(world[0]->wait(s), MismatchError);
}

TEST(InProcessTransport, ReceiveTimeoutNamesWhatWasAwaited) {
  auto world = make_inprocess_world(2, TransportOptions{50ms});
  Tensor in = Tensor::zeros({2, 3});
  Request r = world[0]->irecv(1, recv_header(1, 0, {2, 3}), in);
  const auto start = Clock::now();
  EXPECT_EQ(error_of<TimeoutError>([&] { world[0]->wait(r); }),
            "[InProcessTransport::wait] rank 0 timed out after 50 ms waiting for RECV_F stage 1 "
            "microbatch 0 [2, 3] fp32 step 0 from rank 1");
  const auto elapsed = Clock::now() - start;
  EXPECT_GE(elapsed, 50ms);
  EXPECT_LT(elapsed, 5s);
}

// Sends are rendezvous: without a matching receive, a send never completes.
TEST(InProcessTransport, SendTimeoutWithoutReceiver) {
  auto world = make_inprocess_world(3);
  world[2]->set_timeout(30ms);
  Tensor out = Tensor::zeros({5});
  std::vector<Request> requests{world[2]->isend(0, header("4SEND_B7", {5}, 9), out)};
  EXPECT_EQ(error_of<TimeoutError>([&] { world[2]->wait_all(requests); }),
            "[InProcessTransport::wait_all] rank 2 timed out after 30 ms waiting for SEND_B "
            "stage 4 microbatch 7 [5] fp32 step 9 to rank 0");
}

TEST(InProcessTransport, AbortEndsEveryWait) {
  auto world = make_inprocess_world(4, TransportOptions{20s});
  const Shape shape{16};
  const auto start = Clock::now();
  const auto errors = run_world(world, [&](Transport& t) {
    if (t.rank() == 0) {
      std::this_thread::sleep_for(50ms);
      t.abort("loss is NaN at step 3");
      t.abort("a second reason is ignored");
      return;
    }
    if (t.rank() == 3) {
      Tensor grad = Tensor::zeros(shape);
      t.all_reduce_sum(grad, {1, 3});  // rank 1 never joins: only the abort ends this
      return;
    }
    Tensor in = Tensor::zeros(shape);
    Request r = t.irecv(0, recv_header(1, 0, shape), in);
    t.wait(r);
  });
  EXPECT_LT(Clock::now() - start, 10s);
  EXPECT_EQ(errors[0], "");
  EXPECT_EQ(errors[1],
            "[InProcessTransport::wait] rank 1: the world was aborted by rank 0: loss is NaN at "
            "step 3");
  EXPECT_EQ(errors[2],
            "[InProcessTransport::wait] rank 2: the world was aborted by rank 0: loss is NaN at "
            "step 3");
  EXPECT_EQ(errors[3],
            "[InProcessTransport::all_reduce_sum] rank 3: the world was aborted by rank 0: loss "
            "is NaN at step 3");
  for (auto& t : world) EXPECT_TRUE(t->aborted());
  // Future posts and waits fail too.
  Tensor out = Tensor::zeros(shape);
  EXPECT_EQ(error_of<AbortedError>([&] { world[1]->isend(2, send_header(1, 0, shape), out); }),
            "[InProcessTransport::isend] rank 1: the world was aborted by rank 0: loss is NaN at "
            "step 3");
  EXPECT_THROW(world[2]->barrier(), AbortedError);
}

TEST(InProcessTransport, AbortFromAnotherThreadWhileWaiting) {
  auto world = make_inprocess_world(2, TransportOptions{20s});
  Tensor in = Tensor::zeros({1});
  Request r = world[1]->irecv(0, recv_header(1, 0, {1}), in);
  std::thread watchdog([&] {
    std::this_thread::sleep_for(30ms);
    world[1]->abort("watchdog");
  });
  EXPECT_EQ(error_of<AbortedError>([&] { world[1]->wait(r); }),
            "[InProcessTransport::wait] rank 1: the world was aborted by rank 1: watchdog");
  watchdog.join();
  EXPECT_TRUE(world[0]->aborted());
}

// Each rank posts its group in the opposite order of its peer's; grouped posting completes.
TEST(InProcessTransport, GroupsInOppositeOrdersComplete) {
  auto world = make_inprocess_world(2, TransportOptions{10s});
  const Shape shape{2, 8};
  const auto errors = run_world(world, [&](Transport& t) {
    const int r = t.rank();
    const int peer = 1 - r;
    Tensor out_f = make_payload(r, peer, 0, shape);
    Tensor out_b = make_payload(r, peer, 1, shape);
    Tensor in_f = Tensor::zeros(shape);
    Tensor in_b = Tensor::zeros(shape);
    std::vector<CommOp> ops;
    if (r == 0) {  // stage 0 sends a forward, receives a gradient
      ops = {{1, header("0SEND_F0", shape), out_f}, {1, header("0RECV_B0", shape), in_b}};
      ops.push_back({1, header("0SEND_F1", shape), out_b});
    } else {  // stage 1 receives and sends in the other order
      ops = {{0, header("1SEND_B0", shape), out_f}, {0, header("1RECV_F0", shape), in_f}};
      ops.push_back({0, header("1RECV_F1", shape), in_b});
    }
    t.run_group(ops);
    if (r == 0) {
      expect_payload(in_b, 1, 0, 0);
    } else {
      expect_payload(in_f, 0, 1, 0);
      expect_payload(in_b, 0, 1, 1);
    }
  });
  EXPECT_EQ(errors, (std::vector<std::string>{"", ""}));
}

// The same exchange with each send waited on before the receive is posted deadlocks (as it would
// under NCCL), which is why a group must be posted whole.
TEST(InProcessTransport, UngroupedOppositeSendsDeadlockUntilTimeout) {
  auto world = make_inprocess_world(2, TransportOptions{50ms});
  const Shape shape{4};
  const auto errors = run_world(world, [&](Transport& t) {
    const int r = t.rank();
    Tensor out = Tensor::zeros(shape);
    Request s = t.isend(1 - r, header(r == 0 ? "0SEND_F0" : "1SEND_B0", shape), out);
    t.wait(s);
  });
  EXPECT_EQ(errors[0],
            "[InProcessTransport::wait] rank 0 timed out after 50 ms waiting for SEND_F stage 0 "
            "microbatch 0 [4] fp32 step 0 to rank 1");
  EXPECT_EQ(errors[1],
            "[InProcessTransport::wait] rank 1 timed out after 50 ms waiting for SEND_B stage 1 "
            "microbatch 0 [4] fp32 step 0 to rank 0");
}

TEST(InProcessTransport, RunGroupRejectsComputeHeader) {
  auto world = make_inprocess_world(2);
  MessageHeader bad = header("0SEND_F0", {1});
  bad.kind = ActionKind::kForward;
  EXPECT_EQ(error_of<InvalidArgument>([&] { world[0]->run_group({{1, bad, Tensor::zeros({1})}}); }),
            "[Transport::run_group] operation F stage 0 microbatch 0 [1] fp32 step 0 is neither a "
            "send nor a receive");
}

TEST(InProcessTransport, PostArgumentErrors) {
  auto world = make_inprocess_world(2);
  Transport& t = *world[0];
  Tensor x = Tensor::zeros({2, 3});
  EXPECT_EQ(error_of<InvalidArgument>([&] { t.isend(2, header("0SEND_F0", {2, 3}), x); }),
            "[InProcessTransport::isend] peer 2 is out of range [0, 2)");
  EXPECT_EQ(error_of<InvalidArgument>([&] { t.isend(0, header("0SEND_F0", {2, 3}), x); }),
            "[InProcessTransport::isend] peer 0 is this rank");
  EXPECT_EQ(error_of<InvalidArgument>([&] { t.isend(1, header("0RECV_F0", {2, 3}), x); }),
            "[InProcessTransport::isend] header RECV_F stage 0 microbatch 0 [2, 3] fp32 step 0 is "
            "not a SEND_F or SEND_B header");
  EXPECT_EQ(error_of<InvalidArgument>([&] { t.irecv(1, header("0SEND_F0", {2, 3}), x); }),
            "[InProcessTransport::irecv] header SEND_F stage 0 microbatch 0 [2, 3] fp32 step 0 is "
            "not a RECV_F or RECV_B header");
  EXPECT_EQ(error_of<InvalidArgument>([&] { t.isend(1, header("0SEND_F0", {3, 2}), x); }),
            "[InProcessTransport::isend] tensor [2, 3] fp32 does not match header SEND_F stage 0 "
            "microbatch 0 [3, 2] fp32 step 0");
  Tensor undefined;
  EXPECT_EQ(error_of<InvalidArgument>([&] { t.irecv(1, header("1RECV_B0", {1}), undefined); }),
            "[InProcessTransport::irecv] tensor for RECV_B stage 1 microbatch 0 [1] fp32 step 0 "
            "is undefined");
  Request never;
  EXPECT_EQ(error_of<InvalidArgument>([&] { t.wait(never); }),
            "[InProcessTransport::wait] request 0 is invalid (never posted or already completed)");
  Request foreign{42};
  EXPECT_EQ(error_of<InvalidArgument>([&] { t.test(foreign); }),
            "[InProcessTransport::test] request 42 is not pending on this transport");
}

float rank_value(int rank, std::int64_t i) { return static_cast<float>(rank + 1) * 0.25f + i; }

TEST(InProcessTransport, AllReduceOverSubsetsAndWorld) {
  auto world = make_inprocess_world(4, TransportOptions{10s});
  const auto errors = run_world(world, [&](Transport& t) {
    const int r = t.rank();
    const std::vector<int> pair = r % 2 == 0 ? std::vector<int>{0, 2} : std::vector<int>{1, 3};
    for (int round = 0; round < 3; ++round) {
      Tensor x = Tensor::empty({5});
      for (std::int64_t i = 0; i < 5; ++i) x.data<float>()[i] = rank_value(r, i) + round;
      t.all_reduce_sum(x, pair);
      for (std::int64_t i = 0; i < 5; ++i) {
        const float want = rank_value(pair[0], i) + rank_value(pair[1], i) + 2.0f * round;
        ASSERT_EQ(x.data<float>()[i], want) << "rank " << r << " element " << i;
      }
      Tensor y = Tensor::from_vector(std::vector<std::int32_t>{r, 10 * r, -r});
      t.all_reduce_sum(y);
      EXPECT_EQ(y.to_vector<std::int32_t>(), (std::vector<std::int32_t>{6, 60, -6}));
      Tensor z = Tensor::from_vector(std::vector<double>{0.5 * r});
      t.all_reduce_sum(z, {0, 1, 2, 3});
      EXPECT_EQ(z.to_vector<double>(), (std::vector<double>{3.0}));
      Tensor h = Tensor::from_vector(std::vector<float>{1.0f + r}).to(DType::kBFloat16);
      t.all_reduce_sum(h, {r});  // a group of one leaves the value
      EXPECT_EQ(h.to_vector<float>(), (std::vector<float>{1.0f + r}));
      t.all_reduce_sum(h);
      EXPECT_EQ(h.to_vector<float>(), (std::vector<float>{10.0f}));
    }
  });
  EXPECT_EQ(errors, (std::vector<std::string>(4, "")));
}

TEST(InProcessTransport, AllReduceGroupErrors) {
  auto world = make_inprocess_world(3);
  Tensor x = Tensor::zeros({2});
  Transport& t = *world[1];
  EXPECT_EQ(error_of<InvalidArgument>([&] { t.all_reduce_sum(x, {0, 2}); }),
            "[InProcessTransport::all_reduce_sum] group [0, 2] must contain this rank 1");
  EXPECT_EQ(error_of<InvalidArgument>([&] { t.all_reduce_sum(x, {1, 0}); }),
            "[InProcessTransport::all_reduce_sum] group [1, 0] must be sorted and distinct");
  EXPECT_EQ(error_of<InvalidArgument>([&] { t.all_reduce_sum(x, {1, 3}); }),
            "[InProcessTransport::all_reduce_sum] group [1, 3] holds rank 3 outside [0, 3)");
  Tensor undefined;
  EXPECT_EQ(error_of<InvalidArgument>([&] { t.all_reduce_sum(undefined); }),
            "[InProcessTransport::all_reduce_sum] tensor is undefined");
}

TEST(InProcessTransport, AllReduceShapeDisagreement) {
  auto world = make_inprocess_world(2, TransportOptions{10s});
  const auto errors = run_world(world, [&](Transport& t) {
    Tensor x = Tensor::zeros({t.rank() == 0 ? 4 : 3});
    t.all_reduce_sum(x);
  });
  const std::string want =
      "[InProcessTransport::all_reduce_sum] members disagree: rank 0 has [4] fp32, rank 1 has "
      "[3] fp32";
  EXPECT_EQ(errors, (std::vector<std::string>{want, want}));
}

TEST(InProcessTransport, AllReduceTimeoutNamesMissingRanks) {
  auto world = make_inprocess_world(4, TransportOptions{40ms});
  Tensor x = Tensor::zeros({3});
  EXPECT_EQ(error_of<TimeoutError>([&] { world[1]->all_reduce_sum(x, {0, 1, 3}); }),
            "[InProcessTransport::all_reduce_sum] rank 1 timed out after 40 ms waiting for ranks "
            "[0, 3] in all_reduce_sum over [0, 1, 3] of [3] fp32");
}

TEST(InProcessTransport, BarrierWaitsForEveryRank) {
  auto world = make_inprocess_world(3, TransportOptions{10s});
  std::atomic<int> arrived{0};
  const auto errors = run_world(world, [&](Transport& t) {
    if (t.rank() == 2) std::this_thread::sleep_for(30ms);
    arrived.fetch_add(1);
    t.barrier();
    EXPECT_EQ(arrived.load(), 3) << "rank " << t.rank() << " left the barrier early";
    t.barrier();  // a second round reuses the state
  });
  EXPECT_EQ(errors, (std::vector<std::string>(3, "")));
  world[0]->set_timeout(20ms);
  EXPECT_EQ(error_of<TimeoutError>([&] { world[0]->barrier(); }),
            "[InProcessTransport::barrier] rank 0 timed out after 20 ms waiting for ranks [1, 2] "
            "in barrier");
}

}  // namespace
}  // namespace pipetrain
