#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "pipetrain/data/batch_sampler.h"
#include "pipetrain/data/tokens.h"
#include "pipetrain/error.h"

namespace pipetrain::data {
namespace {

namespace fs = std::filesystem;

// A scratch directory per test, removed afterwards.
class DataFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("pipetrain_test_data_") + info->name() + "_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path write(const std::string& name, const std::vector<char>& bytes) {
    const fs::path path = dir_ / name;
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path;
  }

  // A well-formed llm.c file image holding `tokens`, with header fields overridable.
  static std::vector<char> llmc_image(const std::vector<std::uint16_t>& tokens,
                                      std::int32_t magic = 20240520, std::int32_t version = 1,
                                      std::int64_t count = -2) {
    std::vector<std::int32_t> header(256, 0);
    header[0] = magic;
    header[1] = version;
    header[2] =
        count == -2 ? static_cast<std::int32_t>(tokens.size()) : static_cast<std::int32_t>(count);
    std::vector<char> bytes(1024 + 2 * tokens.size());
    std::memcpy(bytes.data(), header.data(), 1024);  // the test host is little-endian
    if (!tokens.empty()) std::memcpy(bytes.data() + 1024, tokens.data(), 2 * tokens.size());
    return bytes;
  }

  static std::string parse_error(const fs::path& path) {
    try {
      load_llmc_tokens(path);
    } catch (const ParseError& e) {
      return e.what();
    }
    return "no ParseError";
  }

  fs::path dir_;
};

TEST_F(DataFiles, LlmcValidFileRoundTrips) {
  const std::vector<std::uint16_t> raw = {0, 1, 50256, 65535, 7};
  const fs::path path = write("ok.bin", llmc_image(raw));
  EXPECT_EQ(load_llmc_tokens(path), (std::vector<Token>{0, 1, 50256, 65535, 7}));

  const fs::path saved = dir_ / "saved.bin";
  save_llmc_tokens(saved, std::vector<Token>{3, 65535, 0});
  EXPECT_EQ(fs::file_size(saved), 1024u + 6u);
  EXPECT_EQ(load_llmc_tokens(saved), (std::vector<Token>{3, 65535, 0}));
}

TEST_F(DataFiles, LlmcEmptyTokenListIsValid) {
  const fs::path path = write("empty.bin", llmc_image({}));
  EXPECT_TRUE(load_llmc_tokens(path).empty());
}

TEST_F(DataFiles, LlmcTruncatedHeader) {
  std::vector<char> bytes = llmc_image({1, 2, 3});
  bytes.resize(100);
  const fs::path path = write("short.bin", bytes);
  EXPECT_EQ(parse_error(path), "[load_llmc_tokens] '" + path.string() +
                                   "': file holds 100 bytes, the header needs 1024");
}

TEST_F(DataFiles, LlmcTruncatedTokens) {
  std::vector<char> bytes = llmc_image({1, 2, 3, 4, 5});
  bytes.resize(1024 + 7);  // 3.5 tokens of 5
  const fs::path path = write("cut.bin", bytes);
  EXPECT_EQ(parse_error(path), "[load_llmc_tokens] '" + path.string() +
                                   "': header[2] token count=5 needs 10 token bytes, the file "
                                   "holds 7");
}

TEST_F(DataFiles, LlmcTrailingBytes) {
  std::vector<char> bytes = llmc_image({1, 2});
  bytes.push_back(0);
  bytes.push_back(0);
  const fs::path path = write("long.bin", bytes);
  EXPECT_EQ(parse_error(path), "[load_llmc_tokens] '" + path.string() +
                                   "': header[2] token count=2 needs 4 token bytes, the file "
                                   "holds 6");
}

TEST_F(DataFiles, LlmcHugeCountDoesNotReadPastTheEnd) {
  const fs::path path = write("huge.bin", llmc_image({1, 2}, 20240520, 1, 2147483647));
  EXPECT_EQ(parse_error(path), "[load_llmc_tokens] '" + path.string() +
                                   "': header[2] token count=2147483647 needs 4294967294 token "
                                   "bytes, the file holds 4");
}

TEST_F(DataFiles, LlmcNegativeCount) {
  const fs::path path = write("neg.bin", llmc_image({1}, 20240520, 1, -1));
  EXPECT_EQ(parse_error(path),
            "[load_llmc_tokens] '" + path.string() + "': header[2] token count=-1 must be >= 0");
}

TEST_F(DataFiles, LlmcBadMagic) {
  const fs::path path = write("magic.bin", llmc_image({1, 2}, 20240521));
  EXPECT_EQ(parse_error(path), "[load_llmc_tokens] '" + path.string() +
                                   "': header[0] magic=20240521 must be 20240520");
}

TEST_F(DataFiles, LlmcBadVersion) {
  const fs::path path = write("version.bin", llmc_image({1, 2}, 20240520, 2));
  EXPECT_EQ(parse_error(path),
            "[load_llmc_tokens] '" + path.string() + "': header[1] version=2 must be 1");
}

TEST_F(DataFiles, MissingFile) {
  const fs::path path = dir_ / "absent.bin";
  try {
    load_llmc_tokens(path);
    ADD_FAILURE() << "no exception";
  } catch (const ParseError&) {
    ADD_FAILURE() << "a missing file is not a parse error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "[load_llmc_tokens] cannot open '" + path.string() + "'");
  }
}

// A directory used to read as a file of 2^63-1 bytes: std::bad_alloc, naming nothing.
TEST_F(DataFiles, DirectoryIsRefused) {
  try {
    load_text_tokens(dir_);
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "[load_text_tokens] '" + dir_.string() + "' is a directory, expected a data file");
  }
}

TEST_F(DataFiles, TextFileIsBytes) {
  const fs::path path = write("a.txt", {'H', 'i', '\n', static_cast<char>(0xE9)});
  EXPECT_EQ(load_text_tokens(path), (std::vector<Token>{72, 105, 10, 233}));
}

TEST_F(DataFiles, EmptyTextIsRejected) {
  const fs::path path = write("empty.txt", {});
  try {
    load_text_tokens(path);
    ADD_FAILURE() << "no exception";
  } catch (const ParseError& e) {
    EXPECT_EQ(std::string(e.what()), "[load_text_tokens] '" + path.string() +
                                         "': file is empty, expected at least 1 byte");
  }
}

TEST(Tokens, BytesRoundTrip) {
  const std::string text = "In the beginning\n\xff\x01";
  const std::vector<Token> tokens = encode_bytes(text);
  ASSERT_EQ(tokens.size(), text.size());
  EXPECT_EQ(tokens[16], 10);
  EXPECT_EQ(tokens[17], 255);
  EXPECT_EQ(decode_bytes(tokens), text);
  const std::vector<Token> bad = {65, 66, 300};
  try {
    decode_bytes(bad);
    ADD_FAILURE() << "no exception";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(std::string(e.what()), "[decode_bytes] token[2]=300 must be in [0, 256)");
  }
}

TEST(Tokens, SaveRejectsOutOfRangeToken) {
  const std::vector<Token> bad = {1, 70000};
  try {
    save_llmc_tokens("/nonexistent/never_written.bin", bad);
    ADD_FAILURE() << "no exception";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(std::string(e.what()), "[save_llmc_tokens] token[1]=70000 must be in [0, 65535]");
  }
}

TEST(Tokens, UnigramEntropy) {
  // Uniform over 4 symbols: ln 4.
  EXPECT_NEAR(unigram_entropy_nats(std::vector<Token>{0, 1, 2, 3, 3, 2, 1, 0}), std::log(4.0),
              1e-12);
  // A single symbol carries no information.
  EXPECT_EQ(unigram_entropy_nats(std::vector<Token>{9, 9, 9}), 0.0);
  // p = (3/4, 1/4).
  const double expected = -(0.75 * std::log(0.75) + 0.25 * std::log(0.25));
  EXPECT_NEAR(unigram_entropy_nats(std::vector<Token>{5, 5, 5, 200}), expected, 1e-12);
  try {
    unigram_entropy_nats(std::vector<Token>{});
    ADD_FAILURE() << "no exception";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(std::string(e.what()),
              "[unigram_entropy_nats] tokens is empty, expected at least 1 token");
  }
}

std::vector<Token> iota_tokens(int n) {
  std::vector<Token> t(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) t[static_cast<std::size_t>(i)] = i;
  return t;
}

TEST(BatchSampler, WindowsAreShiftedPairs) {
  // 21 tokens, T=4: windows start at 0, 4, 8, 12, 16 (the last needs token 20).
  BatchSampler sampler(iota_tokens(21), 4, 1, 0, /*shuffle=*/false);
  EXPECT_EQ(sampler.num_windows(), 5u);
  for (int w = 0; w < 5; ++w) {
    const Batch b = sampler.next();
    ASSERT_EQ(b.inputs.size(), 4u);
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(b.inputs[static_cast<std::size_t>(i)], 4 * w + i);
      EXPECT_EQ(b.targets[static_cast<std::size_t>(i)], 4 * w + i + 1);
    }
  }
  EXPECT_EQ(sampler.epoch(), 0u);
  EXPECT_EQ(sampler.next().inputs[0], 0);  // wraps to the next epoch
  EXPECT_EQ(sampler.epoch(), 1u);
}

TEST(BatchSampler, ShuffledEpochVisitsEveryWindowOnce) {
  BatchSampler sampler(iota_tokens(1 + 8 * 30), 8, 3, 42);
  ASSERT_EQ(sampler.num_windows(), 30u);
  ASSERT_EQ(sampler.batches_per_epoch(), 10u);
  std::set<Token> starts;
  bool in_order = true;
  Token previous = -1;
  for (int i = 0; i < 10; ++i) {
    const Batch b = sampler.next();
    EXPECT_EQ(b.batch_size, 3);
    EXPECT_EQ(b.seq_len, 8);
    for (int r = 0; r < 3; ++r) {
      const Token s = b.inputs[static_cast<std::size_t>(r * 8)];
      EXPECT_EQ(s % 8, 0);
      EXPECT_EQ(b.targets[static_cast<std::size_t>(r * 8 + 7)], s + 8);
      in_order = in_order && s > previous;
      previous = s;
      starts.insert(s);
    }
  }
  EXPECT_EQ(starts.size(), 30u);
  EXPECT_FALSE(in_order);
  EXPECT_EQ(sampler.epoch(), 0u);
}

TEST(BatchSampler, SameSeedSameBatchesOtherSeedOtherOrder) {
  BatchSampler a(iota_tokens(1000), 10, 4, 7), b(iota_tokens(1000), 10, 4, 7),
      c(iota_tokens(1000), 10, 4, 8);
  bool differs = false;
  for (int i = 0; i < 60; ++i) {  // crosses two epoch boundaries
    const Batch x = a.next(), y = b.next(), z = c.next();
    EXPECT_EQ(x.inputs, y.inputs);
    differs = differs || x.inputs != z.inputs;
  }
  EXPECT_TRUE(differs);
}

TEST(BatchSampler, ShuffleIsPortable) {
  // Pinned so that a change of algorithm (or a library-dependent one) shows up.
  std::vector<std::uint64_t> v = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  shuffle_deterministic(v, 1234);
  std::vector<std::uint64_t> sorted = v;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, (std::vector<std::uint64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(v, (std::vector<std::uint64_t>{0, 3, 4, 7, 9, 8, 5, 6, 1, 2}));
}

TEST(BatchSampler, StateRestoresThePosition) {
  BatchSampler a(iota_tokens(500), 6, 5, 99);
  for (int i = 0; i < 23; ++i) a.next();  // into epoch 1 (16 batches per epoch)
  const SamplerState saved = a.state();
  EXPECT_EQ(saved.epoch, 1u);
  const SamplerState parsed = SamplerState::parse(saved.to_string());
  EXPECT_EQ(parsed, saved);
  BatchSampler b(iota_tokens(500), 6, 5, 0);
  b.restore(parsed);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(a.next().inputs, b.next().inputs);
  b.reset();
  BatchSampler fresh(iota_tokens(500), 6, 5, 99);
  // reset keeps the restored seed and goes back to epoch 0.
  EXPECT_EQ(b.next().inputs, fresh.next().inputs);
}

TEST(BatchSampler, RejectsBadArguments) {
  auto message = [](auto&& make) {
    try {
      make();
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
    return std::string("no InvalidArgument");
  };
  EXPECT_EQ(message([] { BatchSampler(iota_tokens(100), 0, 1, 0); }),
            "[BatchSampler] seq_len=0 must be >= 1");
  EXPECT_EQ(message([] { BatchSampler(iota_tokens(100), 4, 0, 0); }),
            "[BatchSampler] batch_size=0 must be >= 1");
  EXPECT_EQ(message([] { BatchSampler(iota_tokens(100), 32, 4, 0); }),
            "[BatchSampler] 100 tokens hold 3 windows of seq_len=32, fewer than batch_size=4");
  EXPECT_EQ(message([] { BatchSampler(std::vector<Token>{}, 1, 1, 0); }),
            "[BatchSampler] 0 tokens hold 0 windows of seq_len=1, fewer than batch_size=1");
  EXPECT_EQ(message([] {
              BatchSampler s(iota_tokens(100), 4, 1, 0);
              s.restore(SamplerState{0, 0, 25});
            }),
            "[BatchSampler::restore] cursor=25 must be <= num_windows=24");
  EXPECT_EQ(message([] { split_tokens(iota_tokens(10), 1.0); }),
            "[split_tokens] validation_fraction=1 must be in [0, 1)");
}

TEST(SamplerState, ParseRejectsMalformedText) {
  for (const std::string text :
       {"seed=1 epoch=x cursor=0", "seed=1 epoch=2", "", "epoch=1 seed=2 cursor=3",
        "seed=1 epoch=2 cursor=3 extra", "seed=-1 epoch=2 cursor=3"}) {
    try {
      SamplerState::parse(text);
      ADD_FAILURE() << "accepted '" << text << "'";
    } catch (const ParseError& e) {
      EXPECT_EQ(std::string(e.what()), "[SamplerState::parse] '" + text +
                                           "' must be 'seed=<u64> epoch=<u64> cursor=<u64>'");
    }
  }
}

TEST(SplitTokens, TailIsValidation) {
  const TokenSplit split = split_tokens(iota_tokens(100), 0.1);
  ASSERT_EQ(split.train.size(), 90u);
  ASSERT_EQ(split.validation.size(), 10u);
  EXPECT_EQ(split.train.back(), 89);
  EXPECT_EQ(split.validation.front(), 90);
  EXPECT_EQ(split_tokens(iota_tokens(7), 0.0).validation.size(), 0u);
}

}  // namespace
}  // namespace pipetrain::data
