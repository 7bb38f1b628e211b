// make_transport("nccl") in a build that has the NCCL transport (NCCL and MPI built). On a
// machine without a CUDA device (CI) it must fail cleanly, before touching MPI or NCCL.
#include <gtest/gtest.h>

#include <typeinfo>

#include "pipetrain/build_info.h"
#include "pipetrain/comm/transport.h"
#include "pipetrain/cuda/device.h"

namespace pipetrain {
namespace {

bool nccl_transport_built() { return is_built_with(Part::kNccl) && is_built_with(Part::kMpi); }

TEST(NcclFactory, NoDeviceIsAClearError) {
  if (!nccl_transport_built()) GTEST_SKIP() << "the NCCL transport is not built";
  if (cuda_device_count() > 0) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_FALSE(is_available("nccl"));
  try {
    make_transport("nccl");
    ADD_FAILURE() << "make_transport(\"nccl\") did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(typeid(e), typeid(Error));  // not NotBuiltError: the transport is built
    EXPECT_STREQ(e.what(),
                 "[make_transport] no CUDA device is present: cuda_device_count() is 0");
  }
}

TEST(NcclFactory, DeviceButNoMpiSession) {
  if (!nccl_transport_built()) GTEST_SKIP() << "the NCCL transport is not built";
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device is present";
  EXPECT_TRUE(is_available("nccl"));
  try {
    make_transport("nccl");
    ADD_FAILURE() << "make_transport(\"nccl\") did not throw";
  } catch (const InvalidArgument& e) {
    EXPECT_STREQ(e.what(),
                 "[make_transport] MPI is not initialised: create a pipetrain::MpiSession first");
  }
}

}  // namespace
}  // namespace pipetrain
