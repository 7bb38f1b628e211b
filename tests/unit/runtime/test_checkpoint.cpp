#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "pipetrain/comm/inprocess.h"
#include "pipetrain/data/batch_sampler.h"
#include "pipetrain/optim/optimizer.h"
#include "pipetrain/runtime/checkpoint.h"
#include "pipetrain/runtime/executor.h"
#include "pipetrain/runtime/gpt_pipeline.h"
#include "pipetrain/runtime/progress.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/passes.h"

namespace pipetrain::runtime {
namespace {

namespace fs = std::filesystem;
constexpr int kSeq = 8, kBatch = 4, kMicro = 2;
constexpr std::uint64_t kHash = 0x1234;

nn::GptConfig config() {
  nn::GptConfig c;
  c.vocab_size = 32;
  c.context_length = kSeq;
  c.num_layers = 2;
  c.num_heads = 2;
  c.channels = 16;
  c.seed = 3;
  return c;
}

std::vector<data::Token> tokens() {
  std::vector<data::Token> t;
  for (int i = 0; i < 400; ++i) t.push_back((i * 13 + i / 7) % 32);
  return t;
}

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("pipetrain_ckpt_" + name + "_" +
                                            std::to_string(::testing::UnitTest::GetInstance()->random_seed()));
  fs::remove_all(d);
  return d;
}

// Trains `steps` steps with 1F1B on 2 ranks, after loading `load_dir` when not empty, and saves
// into `save_dir` at the end when not empty. Returns rank 0's losses.
std::vector<double> train(int steps, const fs::path& load_dir, const fs::path& save_dir) {
  set_logging(false);
  const Schedule schedule = lower(make_schedule("1f1b", 2, kMicro));
  const Partition partition = partition_gpt(config(), 2, kBatch / kMicro, kSeq);
  auto transports = make_inprocess_world(2, TransportOptions{std::chrono::seconds(30)});
  std::vector<std::vector<double>> losses(2);
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        auto stages = make_gpt_stages(config(), schedule, partition, rank);
        std::vector<nn::Parameter*> ps = stages[0]->parameters();
        optim::AdamW opt(ps);
        data::BatchSampler sampler(tokens(), kSeq, kBatch, 5);
        if (!load_dir.empty()) {
          const CheckpointMeta meta = load_stage_checkpoint(load_dir, rank, 2, *stages[0], opt, kHash);
          sampler.restore(meta.sampler);
        }
        Executor ex(schedule, Topology(2, 2, 1), *transports[rank], {stages[0].get()}, &opt,
                    Shape{kBatch / kMicro, kSeq, 16});
        for (int s = 0; s < steps; ++s) {
          losses[rank].push_back(ex.step(split_batch(sampler.next(), kMicro), 1e-2).loss);
        }
        if (!save_dir.empty()) {
          save_stage_checkpoint(save_dir, rank, 2, *stages[0], opt,
                                CheckpointMeta{opt.step_count(), kHash, sampler.state()});
        }
      } catch (const std::exception& e) {
        errors[rank] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors[0], "");
  EXPECT_EQ(errors[1], "");
  return losses[0];
}

TEST(Checkpoint, ResumeGivesTheSameLosses) {
  const fs::path dir = temp_dir("resume");
  const std::vector<double> straight = train(5, {}, {});
  const std::vector<double> first = train(2, {}, dir);
  EXPECT_TRUE(fs::exists(stage_checkpoint_path(dir, 0, 2)));
  EXPECT_TRUE(fs::exists(stage_checkpoint_path(dir, 1, 2)));
  EXPECT_FALSE(fs::exists(stage_checkpoint_path(dir, 0, 2).string() + ".tmp"));
  const std::vector<double> second = train(3, dir, {});
  ASSERT_EQ(straight.size(), 5u);
  ASSERT_EQ(first.size(), 2u);
  ASSERT_EQ(second.size(), 3u);
  EXPECT_EQ(first[0], straight[0]);
  EXPECT_EQ(first[1], straight[1]);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(second[i], straight[2 + i]) << i;  // bitwise
  fs::remove_all(dir);
}

std::string load_error(const fs::path& dir, int stage, std::uint64_t hash = kHash) {
  auto stages = make_gpt_stages(config(), make_schedule("1f1b", 2, 2),
                                partition_gpt(config(), 2, 1, kSeq), stage);
  optim::AdamW opt(stages[0]->parameters());
  try {
    load_stage_checkpoint(dir, stage, 2, *stages[0], opt, hash);
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(Checkpoint, RejectsDamagedOrForeignFiles) {
  const fs::path dir = temp_dir("damaged");
  train(1, {}, dir);
  const fs::path p0 = stage_checkpoint_path(dir, 0, 2), p1 = stage_checkpoint_path(dir, 1, 2);
  const std::string where = "[load_stage_checkpoint] '" + p1.string() + "': ";

  EXPECT_EQ(load_error(dir, 1, 99), where + "configuration hash 0x1234 differs from this run's 0x63");

  fs::copy_file(p0, p1, fs::copy_options::overwrite_existing);
  EXPECT_EQ(load_error(dir, 1), where + "holds stage 0 of 2, expected stage 1 of 2");

  std::string bytes;
  {
    std::ifstream in(p0, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  auto write = [&](const std::string& b) {
    std::ofstream out(p1, std::ios::binary | std::ios::trunc);
    out.write(b.data(), static_cast<std::streamsize>(b.size()));
  };
  std::string flipped = bytes;
  flipped[200] ^= 0x40;
  write(flipped);
  EXPECT_EQ(load_error(dir, 1).rfind(where + "checksum mismatch: stored 0x", 0), 0u)
      << load_error(dir, 1);
  write(bytes.substr(0, 8));
  EXPECT_EQ(load_error(dir, 1), where + "truncated (needs 16 bytes at offset 0, file has 8)");
  write("hello world, not a checkpoint");
  EXPECT_EQ(load_error(dir, 1), where + "not a pipetrain checkpoint (bad magic)");
  fs::remove(p1);
  EXPECT_EQ(load_error(dir, 1).rfind("[load_stage_checkpoint] cannot open '" + p1.string(), 0), 0u);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pipetrain::runtime
