#include <gtest/gtest.h>

#include "pipetrain/build_info.h"
#include "pipetrain/comm/inprocess.h"
#include "pipetrain/comm/mpi.h"
#include "pipetrain/comm/transport.h"
#include "pipetrain/cuda/device.h"
#include "error_of.h"

namespace pipetrain {
namespace {

using pipetrain::testing::error_of;

TEST(TransportFactory, Names) {
  EXPECT_EQ(transport_names(), (std::vector<std::string>{"inprocess", "mpi", "nccl"}));
}

TEST(TransportFactory, Availability) {
  EXPECT_TRUE(is_available("inprocess"));
  EXPECT_EQ(is_available("mpi"), is_built_with(Part::kMpi));
  // NCCL needs MPI to bootstrap and a CUDA device to run on (test_nccl_factory.cpp).
  EXPECT_EQ(is_available("nccl"),
            is_built_with(Part::kNccl) && is_built_with(Part::kMpi) && cuda_device_count() > 0);
  EXPECT_EQ(error_of<InvalidArgument>([] { is_available("tcp"); }),
            "[is_available] unknown transport 'tcp': expected one of inprocess, mpi, nccl");
}

TEST(TransportFactory, NcclStubWhenNotBuilt) {
  // Builds with NCCL and MPI have the transport: test_nccl_factory.cpp covers them.
  if (is_built_with(Part::kNccl) && is_built_with(Part::kMpi)) GTEST_SKIP() << "NCCL is built";
  EXPECT_EQ(error_of<NotBuiltError>([] { make_transport("nccl"); }),
            is_built_with(Part::kNccl)
                ? "[make_transport] pipetrain was built without MPI: reconfigure with "
                  "-DPIPETRAIN_WITH_MPI=ON (and install it)"
                : "[make_transport] pipetrain was built without NCCL: reconfigure with "
                  "-DPIPETRAIN_WITH_NCCL=ON (and install it)");
}

TEST(TransportFactory, MpiStubWhenNotBuilt) {
  if (is_built_with(Part::kMpi)) GTEST_SKIP() << "built with MPI: tests/mpi covers it";
  EXPECT_EQ(error_of<NotBuiltError>([] { make_transport("mpi"); }),
            "[make_transport] pipetrain was built without MPI: reconfigure with "
            "-DPIPETRAIN_WITH_MPI=ON (and install it)");
  EXPECT_EQ(error_of<NotBuiltError>([] { MpiSession session; }),
            "[MpiSession] pipetrain was built without MPI: reconfigure with "
            "-DPIPETRAIN_WITH_MPI=ON (and install it)");
}

TEST(TransportFactory, RejectsInprocessAndUnknownNames) {
  EXPECT_EQ(error_of<InvalidArgument>([] { make_transport("inprocess"); }),
            "[make_transport] transport 'inprocess' needs one Transport per rank in this "
            "process: use make_inprocess_world()");
  EXPECT_EQ(error_of<InvalidArgument>([] { make_transport("gloo"); }),
            "[make_transport] unknown transport 'gloo': expected one of inprocess, mpi, nccl");
}

TEST(TransportFactory, InprocessWorld) {
  auto world = make_inprocess_world(3);
  ASSERT_EQ(world.size(), 3u);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(world[static_cast<std::size_t>(r)]->rank(), r);
    EXPECT_EQ(world[static_cast<std::size_t>(r)]->world_size(), 3);
    EXPECT_EQ(world[static_cast<std::size_t>(r)]->name(), "inprocess");
    EXPECT_EQ(world[static_cast<std::size_t>(r)]->timeout(), std::chrono::seconds(300));
  }
  EXPECT_EQ(error_of<InvalidArgument>([] { make_inprocess_world(0); }),
            "[make_inprocess_world] world_size=0 must be >= 1");
  EXPECT_EQ(error_of<InvalidArgument>([] {
              make_inprocess_world(2, TransportOptions{std::chrono::milliseconds(0)});
            }),
            "[Transport] timeout=0 ms must be > 0");
  EXPECT_EQ(error_of<InvalidArgument>(
                [&] { world[0]->set_timeout(std::chrono::milliseconds(-5)); }),
            "[Transport::set_timeout] timeout=-5 ms must be > 0");
  world[1]->set_timeout(std::chrono::milliseconds(1234));
  EXPECT_EQ(world[1]->timeout(), std::chrono::milliseconds(1234));
}

}  // namespace
}  // namespace pipetrain
