// The cores of one machine divided among its ranks (cpu_threads.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>

#include "error_of.h"
#include "pipetrain/comm/inprocess.h"
#include "pipetrain/cpu_threads.h"
#include "pipetrain/error.h"

namespace pipetrain {
namespace {

using pipetrain::testing::error_of;

// Sets or clears an environment variable for one test, then puts it back.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name); old != nullptr) old_ = old;
    if (value != nullptr) {
      setenv(name, value, 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_, old_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

class CpuThreads : public ::testing::Test {
 protected:
  void TearDown() override { set_cpu_blas_threads(saved_); }
  int saved_ = cpu_blas_threads();
  ScopedEnv fixed_{"PIPETRAIN_CPU_THREADS", nullptr};
  ScopedEnv openblas_{"OPENBLAS_NUM_THREADS", nullptr};
  ScopedEnv omp_{"OMP_NUM_THREADS", nullptr};
};

// OpenBLAS caps its threads at a number fixed when it was built (64 in Debian 12).
int blas_cap() {
  set_cpu_blas_threads(1 << 20);
  return cpu_blas_threads();
}

int share(int ranks) { return std::min(std::max(1, cpu_cores_available() / ranks), blas_cap()); }

TEST_F(CpuThreads, EachRankGetsItsShareOfTheCores) {
  ASSERT_GE(cpu_cores_available(), 1);
  const int one = share(1), two = share(2);
  EXPECT_EQ(divide_cpu_threads(1), one);
  EXPECT_EQ(cpu_blas_threads(), one);
  EXPECT_EQ(divide_cpu_threads(2), two);
  EXPECT_EQ(divide_cpu_threads(cpu_cores_available() + 5), 1);  // never fewer than one
}

TEST_F(CpuThreads, AnInProcessWorldDividesTheCores) {
  const int two = share(2);
  divide_cpu_threads(1);
  auto world = make_inprocess_world(2);
  EXPECT_EQ(cpu_blas_threads(), two);
}

TEST_F(CpuThreads, PipetrainCpuThreadsWins) {
  ScopedEnv fixed("PIPETRAIN_CPU_THREADS", "3");
  EXPECT_EQ(divide_cpu_threads(2), 3);
  EXPECT_EQ(cpu_blas_threads(), 3);
}

TEST_F(CpuThreads, OpenBlasNumThreadsIsLeftAlone) {
  set_cpu_blas_threads(1);
  ScopedEnv openblas("OPENBLAS_NUM_THREADS", "1");
  EXPECT_EQ(divide_cpu_threads(1), 1);  // the share would be every core
}

TEST_F(CpuThreads, BadValuesAreRefused) {
  EXPECT_EQ(error_of<InvalidArgument>([] { divide_cpu_threads(0); }),
            "[divide_cpu_threads] ranks_on_host=0 must be >= 1");
  EXPECT_EQ(error_of<InvalidArgument>([] { set_cpu_blas_threads(0); }),
            "[set_cpu_blas_threads] threads=0 must be >= 1");
  ScopedEnv junk("PIPETRAIN_CPU_THREADS", "two");
  EXPECT_EQ(error_of<InvalidArgument>([] { divide_cpu_threads(1); }),
            "[divide_cpu_threads] PIPETRAIN_CPU_THREADS='two' must be a whole number in [1, 4096]");
}

}  // namespace
}  // namespace pipetrain
