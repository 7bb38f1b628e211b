#include "pipetrain/runtime/checkpoint.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE (glibc >= 2.28)
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <system_error>
#include <tuple>

#include "pipetrain/error.h"
#include "pipetrain/runtime/executor.h"

namespace pipetrain::runtime {

namespace {

constexpr char kMagic[8] = {'P', 'T', 'C', 'K', 'P', 'T', '\0', '\1'};
constexpr std::uint32_t kVersion = 1;

std::string hex(std::uint64_t v) {
  std::ostringstream s;
  s << "0x" << std::hex << v;
  return s.str();
}

std::uint64_t fnv1a(const char* data, std::size_t n) {
  std::uint64_t h = 1469598103934665603ull;
  for (std::size_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(data[i]);
    h *= 1099511628211ull;
  }
  return h;
}

class Writer {
 public:
  void bytes(const void* p, std::size_t n) { out_.append(static_cast<const char*>(p), n); }
  void u64(std::uint64_t v) {
    for (int i = 0; i < 8; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  void i64(std::int64_t v) { u64(static_cast<std::uint64_t>(v)); }
  void str(const std::string& s) {
    u64(s.size());
    bytes(s.data(), s.size());
  }
  void floats(const std::vector<float>& v) {
    u64(v.size());
    for (float f : v) {
      std::uint32_t u;
      std::memcpy(&u, &f, 4);
      for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>((u >> (8 * i)) & 0xff));
    }
  }
  std::string& data() { return out_; }

 private:
  std::string out_;
};

class Reader {
 public:
  Reader(const std::string& data, std::size_t end, std::string where,
         const char* function = "load_stage_checkpoint")
      : data_(data), end_(end), where_(std::move(where)), function_(function) {}
  void need(std::size_t n) {
    if (n > end_ - at_) {
      fail("truncated (needs " + std::to_string(n) + " bytes at offset " + std::to_string(at_) +
           ", file has " + std::to_string(end_) + ")");
    }
  }
  std::uint64_t u64() {
    need(8);
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i)
      v |= static_cast<std::uint64_t>(static_cast<unsigned char>(data_[at_ + i])) << (8 * i);
    at_ += 8;
    return v;
  }
  std::int64_t i64() { return static_cast<std::int64_t>(u64()); }
  std::size_t remaining() const { return end_ - at_; }
  void skip(std::size_t n) {
    need(n);
    at_ += n;
  }
  std::string str() {
    const std::uint64_t n = u64();
    need(n);
    std::string s = data_.substr(at_, n);
    at_ += n;
    return s;
  }
  std::vector<float> floats() {
    const std::uint64_t n = u64();
    if (n > (end_ - at_) / 4) {
      fail("truncated (needs " + std::to_string(n) + " values at offset " + std::to_string(at_) +
           ", file has " + std::to_string(end_) + " bytes)");
    }
    std::vector<float> v(n);
    for (std::uint64_t k = 0; k < n; ++k) {
      std::uint32_t u = 0;
      for (int i = 0; i < 4; ++i)
        u |= static_cast<std::uint32_t>(static_cast<unsigned char>(data_[at_ + i])) << (8 * i);
      std::memcpy(&v[k], &u, 4);
      at_ += 4;
    }
    return v;
  }
  // Reads a float array: returns the FNV-1a of its bytes, and decodes it into `out` when given.
  std::uint64_t floats_hashed(std::vector<float>* out, std::uint64_t* count) {
    const std::size_t start = at_ + 8;
    if (out != nullptr) {
      *out = floats();
      *count = out->size();
    } else {
      *count = u64();
      if (*count > (end_ - at_) / 4) {
        fail("truncated (needs " + std::to_string(*count) + " values at offset " +
             std::to_string(at_) + ", file has " + std::to_string(end_) + " bytes)");
      }
      at_ += 4 * *count;
    }
    return fnv1a(data_.data() + start, at_ - start);
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw ParseError(detail::message(function_, "'", where_, "': ", what));
  }

 private:
  const std::string& data_;
  std::size_t end_;
  std::size_t at_ = 0;
  std::string where_;
  const char* function_;
};

// Reads the file at `path` whole and checks its magic, checksum and format version. The
// returned bytes end with the 8-byte checksum.
std::string read_checked(const std::filesystem::path& path, const char* function) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw Error(
        detail::message(function, "cannot open '", path.string(), "': ", std::strerror(errno)));
  }
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Reader check(data, data.size(), path.string(), function);
  if (data.size() < sizeof kMagic || std::memcmp(data.data(), kMagic, sizeof kMagic) != 0) {
    check.fail("not a pipetrain checkpoint (bad magic)");
  }
  if (data.size() < sizeof kMagic + 8) check.need(sizeof kMagic + 8);
  const std::size_t body = data.size() - 8;
  std::uint64_t stored = 0;
  for (int i = 0; i < 8; ++i) {
    stored |= static_cast<std::uint64_t>(static_cast<unsigned char>(data[body + i])) << (8 * i);
  }
  const std::uint64_t computed = fnv1a(data.data(), body);
  if (stored != computed) {
    check.fail("checksum mismatch: stored " + hex(stored) + ", computed " + hex(computed));
  }
  Reader rd(data, body, path.string(), function);
  rd.skip(sizeof kMagic);
  const std::uint64_t version = rd.u64();
  if (version != kVersion) {
    rd.fail("format version " + std::to_string(version) + ", expected " + std::to_string(kVersion));
  }
  return data;
}

std::string model_hash_mismatch(std::uint64_t stored, std::uint64_t expected) {
  return "model hash " + hex(stored) + " differs from this run's " + hex(expected);
}

bool belongs_to(const std::string& buffer, const std::map<std::string, nn::Parameter*>& names) {
  const auto slash = buffer.rfind('/');
  return slash != std::string::npos && names.count(buffer.substr(0, slash)) > 0;
}

std::string range(std::int64_t lo, std::int64_t hi) {
  return "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
}

// The header of a stage file, range-checked.
struct FileHeader {
  std::int64_t stage = 0;
  std::int64_t num_stages = 0;
  CheckpointMeta meta;
};

FileHeader read_header(Reader& rd) {
  FileHeader h;
  rd.skip(sizeof kMagic + 8);
  h.stage = rd.i64();
  h.num_stages = rd.i64();
  if (h.num_stages < 1 || h.num_stages > kMaxCheckpointStages) {
    rd.fail("num_stages " + std::to_string(h.num_stages) + " must be in " +
            range(1, kMaxCheckpointStages));
  }
  if (h.stage < 0 || h.stage >= h.num_stages) {
    rd.fail("stage " + std::to_string(h.stage) + " must be in " + range(0, h.num_stages - 1));
  }
  h.meta.step = rd.i64();
  if (h.meta.step < 0 || h.meta.step > kMaxCheckpointStep) {
    rd.fail("step " + std::to_string(h.meta.step) + " must be in " + range(0, kMaxCheckpointStep));
  }
  h.meta.model_hash = rd.u64();
  h.meta.sampler.seed = rd.u64();
  h.meta.sampler.epoch = rd.u64();
  h.meta.sampler.cursor = rd.u64();
  return h;
}

// The header of the file that must hold stage `stage` of `num_stages`.
FileHeader read_header_of(Reader& rd, std::int64_t stage, std::int64_t num_stages) {
  const FileHeader header = read_header(rd);
  if (header.stage != stage || header.num_stages != num_stages) {
    rd.fail("holds stage " + std::to_string(header.stage) + " of " +
            std::to_string(header.num_stages) + ", expected stage " + std::to_string(stage) +
            " of " + std::to_string(num_stages));
  }
  return header;
}

// A parameter's shape: at most 16 dimensions, each in [0, 2^31), whose product fits the bytes
// left in the file (so shape_numel cannot overflow and nothing is allocated for absent values).
Shape read_shape(Reader& rd, std::uint64_t index) {
  const std::uint64_t dims = rd.u64();
  if (dims > 16) {
    rd.fail("parameter " + std::to_string(index) + " has " + std::to_string(dims) + " dimensions");
  }
  Shape shape;
  std::uint64_t numel = 1;
  for (std::uint64_t d = 0; d < dims; ++d) {
    const std::int64_t n = rd.i64();
    if (n < 0 || n >= (std::int64_t{1} << 31)) {
      rd.fail("parameter " + std::to_string(index) + " dimension " + std::to_string(d) + " is " +
              std::to_string(n) + ", expected [0, 2^31)");
    }
    shape.push_back(n);
    numel *= static_cast<std::uint64_t>(n);
    if (numel > rd.remaining() / 4) {
      rd.fail("parameter " + std::to_string(index) + " shape " + shape_to_string(shape) +
              "... needs more values than the file holds");
    }
  }
  return shape;
}

std::int64_t read_optimizer_step(Reader& rd) {
  const std::int64_t step = rd.i64();
  if (step < 0 || step > kMaxCheckpointStep) {
    rd.fail("optimizer step " + std::to_string(step) + " must be in " +
            range(0, kMaxCheckpointStep));
  }
  return step;
}

std::uint64_t trailer_of(const std::string& data) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) {
    v |= static_cast<std::uint64_t>(static_cast<unsigned char>(data[data.size() - 8 + i]))
         << (8 * i);
  }
  return v;
}

[[noreturn]] void fail_io(const char* function, const std::string& what,
                          const std::filesystem::path& path, int error) {
  throw Error(detail::message(function, what, " '", path.string(), "': ", std::strerror(error)));
}

void fsync_path(const std::filesystem::path& path, bool directory, const char* function) {
  const int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) fail_io(function, "cannot open", path, errno);
  if (::fsync(fd) != 0) {
    const int error = errno;
    ::close(fd);
    fail_io(function, "cannot fsync", path, error);
  }
  ::close(fd);
}

// Writes `bytes` to "<path>.tmp", fsyncs it, renames it over `path`, and fsyncs the folder:
// after a crash the file is either absent, or whole.
void write_durably(const std::filesystem::path& path, const std::string& bytes,
                   const char* function) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail_io(function, "cannot write", tmp, errno);
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int error = n < 0 ? errno : EIO;
      ::close(fd);
      fail_io(function, "cannot write", tmp, error);
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const int error = errno;
    ::close(fd);
    fail_io(function, "cannot fsync", tmp, error);
  }
  if (::close(fd) != 0) fail_io(function, "cannot close", tmp, errno);
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    throw Error(detail::message(function, "cannot rename '", tmp.string(), "' to '",
                                path.string(), "': ", ec.message()));
  }
  fsync_path(path.has_parent_path() ? path.parent_path() : std::filesystem::path("."), true,
             function);
}

}  // namespace

std::filesystem::path stage_checkpoint_path(const std::filesystem::path& dir, int stage,
                                            int num_stages) {
  return dir / ("stage-" + std::to_string(stage) + "-of-" + std::to_string(num_stages) + ".ckpt");
}

void save_stage_checkpoint(const std::filesystem::path& dir, int stage, int num_stages,
                           Stage& stage_object, const optim::Optimizer& optimizer,
                           const CheckpointMeta& meta) {
  constexpr const char* kFn = "save_stage_checkpoint";
  PIPETRAIN_CHECK_ARG(num_stages >= 1 && num_stages <= kMaxCheckpointStages, kFn,
                      "num_stages=", num_stages, " must be in ", range(1, kMaxCheckpointStages));
  PIPETRAIN_CHECK_ARG(stage >= 0 && stage < num_stages, kFn, "stage=", stage, " must be in ",
                      range(0, num_stages - 1));
  PIPETRAIN_CHECK_ARG(meta.step >= 0 && meta.step <= kMaxCheckpointStep, kFn,
                      "meta.step=", meta.step, " must be in ", range(0, kMaxCheckpointStep));
  Writer w;
  w.bytes(kMagic, sizeof kMagic);
  w.u64(kVersion);
  w.i64(stage);
  w.i64(num_stages);
  w.i64(meta.step);
  w.u64(meta.model_hash);
  w.u64(meta.sampler.seed);
  w.u64(meta.sampler.epoch);
  w.u64(meta.sampler.cursor);
  const std::vector<nn::Parameter*> params = stage_object.parameters();
  std::map<std::string, nn::Parameter*> names;
  w.u64(params.size());
  for (nn::Parameter* p : params) {
    names[p->name] = p;
    w.str(p->name);
    w.u64(p->value.shape().size());
    for (std::int64_t d : p->value.shape()) w.i64(d);
    w.floats(p->value.to_vector<float>());
  }
  const optim::OptimizerState state = optimizer.state();
  w.str(state.kind);
  w.i64(state.step);
  std::vector<const optim::StateBuffer*> mine;
  for (const auto& b : state.buffers) {
    if (belongs_to(b.name, names)) mine.push_back(&b);
  }
  w.u64(mine.size());
  for (const auto* b : mine) {
    w.str(b->name);
    w.floats(b->data);
  }
  w.u64(fnv1a(w.data().data(), w.data().size()));

  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    throw Error(detail::message(kFn, "cannot create '", dir.string(), "': ", ec.message()));
  }
  write_durably(stage_checkpoint_path(dir, stage, num_stages), w.data(), kFn);
}

CheckpointMeta load_stage_checkpoint(const std::filesystem::path& dir, int stage, int num_stages,
                                     Stage& stage_object, optim::Optimizer& optimizer,
                                     std::uint64_t expected_model_hash) {
  const std::filesystem::path path = stage_checkpoint_path(dir, stage, num_stages);
  const std::string data = read_checked(path, "load_stage_checkpoint");
  Reader rd(data, data.size() - 8, path.string());
  const FileHeader header = read_header_of(rd, stage, num_stages);
  const CheckpointMeta meta = header.meta;
  if (meta.model_hash != expected_model_hash) {
    rd.fail(model_hash_mismatch(meta.model_hash, expected_model_hash));
  }
  const std::vector<nn::Parameter*> params = stage_object.parameters();
  const std::uint64_t count = rd.u64();
  if (count != params.size()) {
    rd.fail("holds " + std::to_string(count) + " parameters, the stage has " +
            std::to_string(params.size()));
  }
  std::vector<std::vector<float>> values(params.size());
  std::map<std::string, nn::Parameter*> names;
  for (std::size_t i = 0; i < params.size(); ++i) {
    const std::string name = rd.str();
    const Shape shape = read_shape(rd, i);
    if (name != params[i]->name || shape != params[i]->value.shape()) {
      rd.fail("parameter " + std::to_string(i) + " is '" + name + "' " + shape_to_string(shape) +
              ", expected '" + params[i]->name + "' " + shape_to_string(params[i]->value.shape()));
    }
    values[i] = rd.floats();
    if (static_cast<std::int64_t>(values[i].size()) != params[i]->value.numel()) {
      rd.fail("parameter '" + name + "' holds " + std::to_string(values[i].size()) +
              " values, expected " + std::to_string(params[i]->value.numel()));
    }
    names[name] = params[i];
  }
  const std::string kind = rd.str();
  const std::int64_t opt_step = read_optimizer_step(rd);
  optim::OptimizerState state = optimizer.state();
  if (kind != state.kind) rd.fail("optimizer '" + kind + "', this run uses '" + state.kind + "'");
  const std::uint64_t nbuf = rd.u64();
  std::map<std::string, std::vector<float>> buffers;
  for (std::uint64_t i = 0; i < nbuf; ++i) {
    std::string name = rd.str();
    buffers[name] = rd.floats();
  }
  for (auto& b : state.buffers) {
    if (!belongs_to(b.name, names)) continue;
    auto it = buffers.find(b.name);
    if (it == buffers.end() || it->second.size() != b.data.size()) {
      rd.fail("optimizer buffer '" + b.name + "' is missing or has the wrong size");
    }
    b.data = it->second;
  }
  state.step = opt_step;
  // Everything checked: apply.
  optimizer.load_state(state);
  for (std::size_t i = 0; i < params.size(); ++i) {
    params[i]->value.copy_from(Tensor::from_vector(values[i], params[i]->value.shape()));
  }
  return meta;
}

namespace {

constexpr const char* kManifestHeader = "pipetrain checkpoint manifest 1";
constexpr std::uint64_t kMaxFileSize = std::uint64_t{1} << 48;

std::string manifest_text(const CheckpointManifest& m) {
  std::string t = std::string(kManifestHeader) + "\n";
  t += "step " + std::to_string(m.step) + "\n";
  t += "num_stages " + std::to_string(m.num_stages) + "\n";
  t += "model_hash " + hex(m.model_hash) + "\n";
  for (const auto& f : m.files) {
    t += "file " + f.name + " " + std::to_string(f.size) + " " + hex(f.checksum) + "\n";
  }
  t += "end\n";
  return t;
}

// Reads <dir>/manifest.txt when it exists; nullopt when it does not. Throws when it is there
// but cannot be read or parsed.
std::optional<CheckpointManifest> read_manifest_if_present(const std::filesystem::path& dir,
                                                           const char* function) {
  const std::filesystem::path path = dir / kCheckpointManifestName;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return std::nullopt;
  const std::uint64_t size = std::filesystem::file_size(path, ec);
  if (ec || size > (1u << 20)) {
    throw ParseError(detail::message(function, "'", path.string(), "': ",
                                     ec ? ec.message() : "larger than 1 MiB, not a manifest"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_io(function, "cannot open", path, errno);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse_checkpoint_manifest(text, path.string());
}

// A complete step folder: its manifest parses, names `step` (when >= 0), and every listed file
// exists with its size. Never throws.
std::optional<CheckpointManifest> complete_manifest(const std::filesystem::path& dir,
                                                    std::int64_t step) {
  try {
    std::optional<CheckpointManifest> m = read_manifest_if_present(dir, "find_latest_checkpoint");
    if (!m || (step >= 0 && m->step != step)) return std::nullopt;
    for (const auto& f : m->files) {
      std::error_code ec;
      if (std::filesystem::file_size(dir / f.name, ec) != f.size || ec) return std::nullopt;
    }
    return m;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// "step-<n>" -> (n, 0), "step-<n>-stages-<S>" -> (n, S); anything else (staging folders
// "step-<n>.tmp-<S>" included) -> nullopt.
std::optional<std::pair<std::int64_t, int>> parse_step_folder(const std::string& name) {
  long long n = -1;
  int S = 0, used = 0;
  if (std::sscanf(name.c_str(), "step-%lld%n", &n, &used) == 1 && n >= 0 &&
      "step-" + std::to_string(n) == name) {
    return std::make_pair(static_cast<std::int64_t>(n), 0);
  }
  if (std::sscanf(name.c_str(), "step-%lld-stages-%d", &n, &S) == 2 && n >= 0 && S >= 1 &&
      "step-" + std::to_string(n) + "-stages-" + std::to_string(S) == name) {
    return std::make_pair(static_cast<std::int64_t>(n), S);
  }
  return std::nullopt;
}

bool is_staging_name(const std::string& name) {
  return name.rfind("step-", 0) == 0 && name.find(".tmp") != std::string::npos;
}

}  // namespace

CheckpointManifest parse_checkpoint_manifest(std::string_view text, const std::string& where) {
  constexpr const char* kFn = "parse_checkpoint_manifest";
  std::vector<std::string_view> lines;
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    if (nl == std::string_view::npos) {
      lines.push_back(text);
      break;
    }
    lines.push_back(text.substr(0, nl));
    text.remove_prefix(nl + 1);
  }
  std::size_t at = 0;
  auto fail = [&](const std::string& what) -> void {
    throw ParseError(detail::message(kFn, "'", where, "': line ", at + 1, ": ", what));
  };
  auto next = [&](std::string_view key) -> std::vector<std::string_view> {
    if (at >= lines.size()) {
      at = lines.size();
      fail("missing, expected '" + std::string(key) + " ...' (truncated manifest)");
    }
    std::vector<std::string_view> words;
    std::string_view line = lines[at];
    while (!line.empty()) {
      const std::size_t sp = line.find(' ');
      words.push_back(line.substr(0, sp));
      if (sp == std::string_view::npos) break;
      line.remove_prefix(sp + 1);
    }
    if (words.empty() || words[0] != key) {
      fail("'" + std::string(lines[at].substr(0, 80)) + "', expected '" + std::string(key) +
           " ...'");
    }
    return words;
  };
  auto number = [&](std::string_view word, std::uint64_t lo, std::uint64_t hi, const char* name,
                    int base = 10) -> std::uint64_t {
    std::uint64_t v = 0;
    if (base == 16) {
      if (word.substr(0, 2) != "0x") fail(std::string(name) + " must be hexadecimal (0x...)");
      word.remove_prefix(2);
    }
    const auto [end, ec] = std::from_chars(word.data(), word.data() + word.size(), v, base);
    if (ec != std::errc() || end != word.data() + word.size() || word.empty()) {
      fail(std::string(name) + "='" + std::string(word.substr(0, 40)) + "' is not a number");
    }
    if (v < lo || v > hi) {
      fail(std::string(name) + "=" + std::to_string(v) + " must be in [" + std::to_string(lo) +
           ", " + std::to_string(hi) + "]");
    }
    return v;
  };
  CheckpointManifest m;
  if (lines.empty() || lines[0] != kManifestHeader) {
    fail(std::string("not a pipetrain manifest, expected '") + kManifestHeader + "'");
  }
  ++at;
  auto words = next("step");
  if (words.size() != 2) fail("expected 'step <n>'");
  m.step = static_cast<std::int64_t>(number(words[1], 0, kMaxCheckpointStep, "step"));
  ++at;
  words = next("num_stages");
  if (words.size() != 2) fail("expected 'num_stages <S>'");
  m.num_stages = static_cast<int>(number(words[1], 1, kMaxCheckpointStages, "num_stages"));
  ++at;
  words = next("model_hash");
  if (words.size() != 2) fail("expected 'model_hash 0x<hex>'");
  m.model_hash = number(words[1], 0, ~std::uint64_t{0}, "model_hash", 16);
  ++at;
  for (int s = 0; s < m.num_stages; ++s, ++at) {
    words = next("file");
    if (words.size() != 4) fail("expected 'file <name> <bytes> 0x<checksum>'");
    CheckpointManifest::File f;
    f.name = std::string(words[1]);
    const std::string want = stage_checkpoint_path({}, s, m.num_stages).filename().string();
    if (f.name != want) fail("file '" + f.name.substr(0, 80) + "', expected '" + want + "'");
    f.size = number(words[2], 24, kMaxFileSize, "size");
    f.checksum = number(words[3], 0, ~std::uint64_t{0}, "checksum", 16);
    m.files.push_back(std::move(f));
  }
  next("end");
  if (lines[at].size() != 3) fail("expected 'end'");
  if (at + 1 != lines.size()) {
    ++at;
    fail("text after 'end'");
  }
  return m;
}

std::filesystem::path checkpoint_staging_dir(const std::filesystem::path& save_dir,
                                             std::int64_t step, int num_stages) {
  return save_dir / ("step-" + std::to_string(step) + ".tmp-" + std::to_string(num_stages));
}

std::filesystem::path commit_checkpoint(const std::filesystem::path& save_dir, std::int64_t step,
                                        int num_stages) {
  constexpr const char* kFn = "commit_checkpoint";
  PIPETRAIN_CHECK_ARG(num_stages >= 1 && num_stages <= kMaxCheckpointStages, kFn,
                      "num_stages=", num_stages, " must be in ", range(1, kMaxCheckpointStages));
  PIPETRAIN_CHECK_ARG(step >= 0 && step <= kMaxCheckpointStep, kFn, "step=", step,
                      " must be in ", range(0, kMaxCheckpointStep));
  const std::filesystem::path staging = checkpoint_staging_dir(save_dir, step, num_stages);
  CheckpointManifest manifest;
  manifest.step = step;
  manifest.num_stages = num_stages;
  std::set<std::string> listed;
  for (int s = 0; s < num_stages; ++s) {
    const std::filesystem::path path = stage_checkpoint_path(staging, s, num_stages);
    const std::string data = read_checked(path, kFn);
    Reader rd(data, data.size() - 8, path.string(), kFn);
    const FileHeader header = read_header(rd);
    if (header.stage != s || header.num_stages != num_stages || header.meta.step != step) {
      rd.fail("holds stage " + std::to_string(header.stage) + " of " +
              std::to_string(header.num_stages) + " at step " +
              std::to_string(header.meta.step) + ", expected stage " + std::to_string(s) +
              " of " + std::to_string(num_stages) + " at step " + std::to_string(step));
    }
    if (s == 0) {
      manifest.model_hash = header.meta.model_hash;
    } else if (header.meta.model_hash != manifest.model_hash) {
      rd.fail(model_hash_mismatch(header.meta.model_hash, manifest.model_hash));
    }
    manifest.files.push_back({path.filename().string(), data.size(), trailer_of(data)});
    listed.insert(path.filename().string());
  }
  // Leftovers of an earlier, crashed save of the same step and cut ("*.tmp" files).
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(staging, ec)) {
    if (listed.count(entry.path().filename().string()) == 0) {
      std::filesystem::remove_all(entry.path(), ec);
    }
  }
  write_durably(staging / kCheckpointManifestName, manifest_text(manifest), kFn);
  fsync_path(staging, true, kFn);

  // Never write into a complete folder of another cut: take a name of our own.
  std::filesystem::path final_dir = save_dir / ("step-" + std::to_string(step));
  if (std::filesystem::exists(final_dir, ec)) {
    const std::optional<CheckpointManifest> there = complete_manifest(final_dir, step);
    if (!there || there->num_stages != num_stages) {
      final_dir = save_dir / ("step-" + std::to_string(step) + "-stages-" +
                              std::to_string(num_stages));
    }
  }
  bool exchanged = false;
  if (std::filesystem::exists(final_dir, ec)) {
    // A checkpoint of the same step and cut (an earlier run). Swap the two folders in one
    // atomic step, so that final_dir names a complete checkpoint at every instant; the old one
    // ends up under the staging name and is removed with the other leftovers below.
    if (::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) ==
        0) {
      exchanged = true;
    } else {
      // A file system without RENAME_EXCHANGE: move the old one aside first. A crash between
      // the two renames leaves no final_dir (find_latest_checkpoint then takes an older step).
      const std::filesystem::path old = save_dir / (final_dir.filename().string() + ".tmp-old");
      std::filesystem::remove_all(old, ec);
      std::filesystem::rename(final_dir, old, ec);
      if (ec) {
        throw Error(detail::message(kFn, "cannot move '", final_dir.string(), "' aside to '",
                                    old.string(), "': ", ec.message()));
      }
    }
  }
  if (!exchanged) std::filesystem::rename(staging, final_dir, ec);
  if (ec) {
    throw Error(detail::message(kFn, "cannot rename '", staging.string(), "' to '",
                                final_dir.string(), "': ", ec.message()));
  }
  fsync_path(save_dir, true, kFn);
  // What crashed saves left behind: staging folders and stray "*.tmp" entries.
  for (const auto& entry : std::filesystem::directory_iterator(save_dir, ec)) {
    if (is_staging_name(entry.path().filename().string())) {
      std::filesystem::remove_all(entry.path(), ec);
    }
  }
  return final_dir;
}

std::optional<std::filesystem::path> find_latest_checkpoint(
    const std::filesystem::path& save_dir) {
  // Largest step first; of several complete folders of one step (cuts of different runs), the
  // one whose manifest was written last; then the name, so that the answer never depends on
  // the order of the directory.
  using Key = std::tuple<std::int64_t, std::filesystem::file_time_type, std::string>;
  std::optional<std::filesystem::path> best;
  std::optional<Key> best_key;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(save_dir, ec)) {
    const std::string name = entry.path().filename().string();
    const auto step = parse_step_folder(name);
    if (!step || !entry.is_directory(ec)) continue;
    if (best_key && step->first < std::get<0>(*best_key)) continue;
    if (!complete_manifest(entry.path(), step->first)) continue;
    std::error_code time_ec;
    const auto written =
        std::filesystem::last_write_time(entry.path() / kCheckpointManifestName, time_ec);
    const Key key{step->first, time_ec ? std::filesystem::file_time_type::min() : written, name};
    if (!best_key || key > *best_key) {
      best = entry.path();
      best_key = key;
    }
  }
  return best;
}

std::filesystem::path resolve_checkpoint(const std::filesystem::path& path) {
  constexpr const char* kFn = "resolve_checkpoint";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    throw Error(detail::message(kFn, "'", path.string(), "': does not exist"));
  }
  if (!std::filesystem::is_directory(path, ec)) {
    throw Error(detail::message(kFn, "'", path.string(), "': is not a directory"));
  }
  if (std::filesystem::exists(path / kCheckpointManifestName, ec)) return path;
  if (auto latest = find_latest_checkpoint(path)) return *latest;
  throw Error(detail::message(kFn, "'", path.string(), "': holds no complete checkpoint (no ",
                              kCheckpointManifestName, " in it or in any step-<n> folder)"));
}

void check_directory_writable(const std::filesystem::path& dir, const char* function) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir)) {
    throw Error(detail::message(function, "cannot write in '", dir.string(), "': ",
                                ec ? ec.message() : std::string("not a directory")));
  }
  static std::atomic<int> counter{0};
  const std::filesystem::path probe =
      dir / (".write-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  try {
    write_durably(probe, "pipetrain\n", function);
  } catch (const Error& e) {
    std::filesystem::remove(probe.string() + ".tmp", ec);
    throw Error(detail::message(function, "cannot write in '", dir.string(), "': ", e.what()));
  }
  std::filesystem::remove(probe, ec);
}

namespace {

constexpr const char* kAnyCut = "load_checkpoint_into_stage";

std::string describe(const CheckpointMeta& meta) {
  return "step " + std::to_string(meta.step) + ", data position (seed " +
         std::to_string(meta.sampler.seed) + ", epoch " + std::to_string(meta.sampler.epoch) +
         ", cursor " + std::to_string(meta.sampler.cursor) + ")";
}

[[noreturn]] void fail_at(const std::filesystem::path& where, const std::string& what) {
  throw ParseError(detail::message(kAnyCut, "'", where.string(), "': ", what));
}

// One saved array (a parameter's value or an optimizer buffer), seen in one or more files.
struct Saved {
  Shape shape;                  // parameters only
  std::uint64_t count = 0;      // number of values
  std::uint64_t hash = 0;       // FNV-1a of the bytes, to compare tied copies
  std::filesystem::path first;  // the file it was first seen in
  std::vector<float> values;    // kept only when one of the stages needs it
};

// Records one array read by `take`; a second copy (a tied parameter) must be bitwise equal.
template <typename Take>
void record(std::map<std::string, Saved>& saved, const std::string& name, const Shape& shape,
            bool wanted, const std::filesystem::path& path, const std::string& what, Take take) {
  Saved entry;
  entry.shape = shape;
  entry.first = path;
  auto it = saved.find(name);
  const bool keep = wanted && it == saved.end();
  entry.hash = take(keep ? &entry.values : nullptr, &entry.count);
  if (it == saved.end()) {
    saved.emplace(name, std::move(entry));
  } else if (it->second.shape != entry.shape || it->second.count != entry.count ||
             it->second.hash != entry.hash) {
    fail_at(path,
            what + " '" + name + "' differs from its copy in '" + it->second.first.string() + "'");
  }
}

std::string parameter_of(const std::string& buffer) {
  const auto slash = buffer.rfind('/');
  return slash == std::string::npos ? std::string() : buffer.substr(0, slash);
}

}  // namespace

LoadedCheckpoint load_checkpoint_into_stage(const std::filesystem::path& dir,
                                            std::span<Stage* const> stages,
                                            optim::Optimizer& optimizer,
                                            std::uint64_t expected_model_hash) {
  // The manifest names the checkpoint's files; nothing else in the folder is looked at.
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) fail_at(dir, "does not exist");
  if (!std::filesystem::is_directory(dir, ec)) fail_at(dir, "is not a directory");
  const std::optional<CheckpointManifest> manifest = read_manifest_if_present(dir, kAnyCut);
  if (!manifest) {
    fail_at(dir, std::string("holds no ") + kCheckpointManifestName +
                     ", so it is not a complete checkpoint (a save that did not finish, or a "
                     "folder written before manifests existed)");
  }
  const int num_stages = manifest->num_stages;
  for (int s = 0; s < num_stages; ++s) {
    const std::filesystem::path path = stage_checkpoint_path(dir, s, num_stages);
    const std::uint64_t size = std::filesystem::file_size(path, ec);
    if (ec) fail_at(path, "missing (the manifest lists it)");
    if (size != manifest->files[s].size) {
      fail_at(path, "holds " + std::to_string(size) + " bytes, the manifest says " +
                        std::to_string(manifest->files[s].size));
    }
  }

  // What these stages need: parameters by name (a name may have two holders: tied copies).
  std::map<std::string, std::vector<nn::Parameter*>> wanted;
  for (Stage* stage : stages) {
    for (nn::Parameter* p : stage->parameters()) wanted[p->name].push_back(p);
  }
  optim::OptimizerState state = optimizer.state();

  std::map<std::string, Saved> params, buffers;
  CheckpointMeta meta;
  std::int64_t opt_step = 0;
  std::filesystem::path first_path;
  for (int s = 0; s < num_stages; ++s) {
    const std::filesystem::path path = stage_checkpoint_path(dir, s, num_stages);
    const std::string data = read_checked(path, kAnyCut);
    Reader rd(data, data.size() - 8, path.string(), kAnyCut);
    if (trailer_of(data) != manifest->files[s].checksum) {
      rd.fail("checksum " + hex(trailer_of(data)) + " differs from the manifest's " +
              hex(manifest->files[s].checksum));
    }
    const FileHeader header = read_header_of(rd, s, num_stages);
    const CheckpointMeta m = header.meta;
    if (m.step != manifest->step) {
      rd.fail("step " + std::to_string(m.step) + " differs from the manifest's " +
              std::to_string(manifest->step));
    }
    if (m.model_hash != expected_model_hash) {
      rd.fail(model_hash_mismatch(m.model_hash, expected_model_hash));
    }
    if (s == 0) {
      meta = m;
      first_path = path;
    } else if (!(m == meta)) {
      rd.fail(describe(m) + " differ from '" + first_path.string() + "': " + describe(meta));
    }
    const std::uint64_t count = rd.u64();
    std::vector<std::pair<std::string, Shape>> file_params;
    for (std::uint64_t i = 0; i < count; ++i) {
      const std::string name = rd.str();
      const Shape shape = read_shape(rd, i);
      record(params, name, shape, wanted.count(name) > 0, path, "parameter",
             [&](std::vector<float>* out, std::uint64_t* n) { return rd.floats_hashed(out, n); });
      const Saved& got = params.at(name);
      if (static_cast<std::int64_t>(got.count) != shape_numel(shape)) {
        rd.fail("parameter '" + name + "' holds " + std::to_string(got.count) +
                " values, expected " + std::to_string(shape_numel(shape)));
      }
    }
    const std::string kind = rd.str();
    const std::int64_t step = read_optimizer_step(rd);
    if (kind != state.kind) rd.fail("optimizer '" + kind + "', this run uses '" + state.kind + "'");
    if (s == 0) {
      opt_step = step;
    } else if (step != opt_step) {
      rd.fail("optimizer step " + std::to_string(step) + " differs from '" + first_path.string() +
              "': optimizer step " + std::to_string(opt_step));
    }
    const std::uint64_t nbuf = rd.u64();
    for (std::uint64_t i = 0; i < nbuf; ++i) {
      const std::string name = rd.str();
      record(buffers, name, Shape{}, wanted.count(parameter_of(name)) > 0, path, "optimizer buffer",
             [&](std::vector<float>* out, std::uint64_t* n) { return rd.floats_hashed(out, n); });
    }
  }

  // Every parameter and optimizer buffer of these stages must be there, with its size.
  for (const auto& [name, holders] : wanted) {
    auto it = params.find(name);
    if (it == params.end()) {
      fail_at(dir, "parameter '" + name + "' of this stage is not in the checkpoint");
    }
    if (it->second.shape != holders[0]->value.shape()) {
      fail_at(dir, "parameter '" + name + "' is " + shape_to_string(it->second.shape) +
                       " in the checkpoint, this stage has " +
                       shape_to_string(holders[0]->value.shape()));
    }
  }
  for (auto& b : state.buffers) {
    if (wanted.count(parameter_of(b.name)) == 0) continue;
    auto it = buffers.find(b.name);
    if (it == buffers.end()) {
      fail_at(dir, "optimizer buffer '" + b.name + "' is not in the checkpoint");
    }
    if (it->second.count != b.data.size()) {
      fail_at(dir, "optimizer buffer '" + b.name + "' holds " + std::to_string(it->second.count) +
                       " values in the checkpoint, this run has " + std::to_string(b.data.size()));
    }
    b.data = it->second.values;
  }
  state.step = opt_step;
  // Everything checked: apply.
  optimizer.load_state(state);
  for (const auto& [name, holders] : wanted) {
    const Saved& saved = params.at(name);
    for (nn::Parameter* p : holders) {
      p->value.copy_from(Tensor::from_vector(saved.values, p->value.shape()));
    }
  }
  return LoadedCheckpoint{meta, num_stages};
}

LoadedCheckpoint load_checkpoint_into_stage(const std::filesystem::path& dir, Stage& stage,
                                            optim::Optimizer& optimizer,
                                            std::uint64_t expected_model_hash) {
  Stage* const one[] = {&stage};
  return load_checkpoint_into_stage(dir, std::span<Stage* const>(one), optimizer,
                                    expected_model_hash);
}

}  // namespace pipetrain::runtime
