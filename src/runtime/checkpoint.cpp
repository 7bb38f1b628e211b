#include "pipetrain/runtime/checkpoint.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <system_error>

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
  Reader(const std::string& data, std::size_t end, std::string where)
      : data_(data), end_(end), where_(std::move(where)) {}
  void need(std::size_t n) {
    if (n > end_ - at_) {
      fail("truncated (needs " + std::to_string(n) + " bytes at offset " + std::to_string(at_) +
           ", file has " + std::to_string(end_) + ")");
    }
  }
  std::uint64_t u64() {
    need(8);
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(static_cast<unsigned char>(data_[at_ + i])) << (8 * i);
    at_ += 8;
    return v;
  }
  std::int64_t i64() { return static_cast<std::int64_t>(u64()); }
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
      for (int i = 0; i < 4; ++i) u |= static_cast<std::uint32_t>(static_cast<unsigned char>(data_[at_ + i])) << (8 * i);
      std::memcpy(&v[k], &u, 4);
      at_ += 4;
    }
    return v;
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw ParseError(detail::message("load_stage_checkpoint", "'", where_, "': ", what));
  }

 private:
  const std::string& data_;
  std::size_t end_;
  std::size_t at_ = 0;
  std::string where_;
};

bool belongs_to(const std::string& buffer, const std::map<std::string, nn::Parameter*>& names) {
  const auto slash = buffer.rfind('/');
  return slash != std::string::npos && names.count(buffer.substr(0, slash)) > 0;
}

}  // namespace

std::filesystem::path stage_checkpoint_path(const std::filesystem::path& dir, int stage,
                                            int num_stages) {
  return dir / ("stage-" + std::to_string(stage) + "-of-" + std::to_string(num_stages) + ".ckpt");
}

void save_stage_checkpoint(const std::filesystem::path& dir, int stage, int num_stages,
                           Stage& stage_object, const optim::Optimizer& optimizer,
                           const CheckpointMeta& meta) {
  Writer w;
  w.bytes(kMagic, sizeof kMagic);
  w.u64(kVersion);
  w.i64(stage);
  w.i64(num_stages);
  w.i64(meta.step);
  w.u64(meta.config_hash);
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
  const std::filesystem::path path = stage_checkpoint_path(dir, stage, num_stages);
  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (out) out.write(w.data().data(), static_cast<std::streamsize>(w.data().size()));
    out.flush();
    if (!out) {
      throw Error(detail::message("save_stage_checkpoint", "cannot write '", tmp.string(), "': ",
                                  std::strerror(errno)));
    }
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    throw Error(detail::message("save_stage_checkpoint", "cannot rename '", tmp.string(),
                                "' to '", path.string(), "': ", ec.message()));
  }
}

CheckpointMeta load_stage_checkpoint(const std::filesystem::path& dir, int stage, int num_stages,
                                     Stage& stage_object, optim::Optimizer& optimizer,
                                     std::uint64_t expected_config_hash) {
  const std::filesystem::path path = stage_checkpoint_path(dir, stage, num_stages);
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw Error(detail::message("load_stage_checkpoint", "cannot open '", path.string(), "': ",
                                std::strerror(errno)));
  }
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Reader check(data, data.size(), path.string());
  if (data.size() < sizeof kMagic || std::memcmp(data.data(), kMagic, sizeof kMagic) != 0) {
    check.fail("not a pipetrain checkpoint (bad magic)");
  }
  if (data.size() < sizeof kMagic + 8) check.need(sizeof kMagic + 8);
  const std::size_t body = data.size() - 8;
  {
    std::uint64_t stored = 0;
    for (int i = 0; i < 8; ++i) stored |= static_cast<std::uint64_t>(static_cast<unsigned char>(data[body + i])) << (8 * i);
    const std::uint64_t computed = fnv1a(data.data(), body);
    if (stored != computed) {
      check.fail("checksum mismatch: stored " + hex(stored) + ", computed " + hex(computed));
    }
  }
  Reader rd(data, body, path.string());
  rd.skip(sizeof kMagic);
  const std::uint64_t version = rd.u64();
  if (version != kVersion) {
    rd.fail("format version " + std::to_string(version) + ", expected " +
            std::to_string(kVersion));
  }
  const std::int64_t file_stage = rd.i64();
  const std::int64_t file_stages = rd.i64();
  if (file_stage != stage || file_stages != num_stages) {
    rd.fail("holds stage " + std::to_string(file_stage) + " of " + std::to_string(file_stages) +
            ", expected stage " + std::to_string(stage) + " of " + std::to_string(num_stages));
  }
  CheckpointMeta meta;
  meta.step = rd.i64();
  meta.config_hash = rd.u64();
  meta.sampler.seed = rd.u64();
  meta.sampler.epoch = rd.u64();
  meta.sampler.cursor = rd.u64();
  if (meta.config_hash != expected_config_hash) {
    rd.fail("configuration hash " + hex(meta.config_hash) + " differs from this run's " +
            hex(expected_config_hash));
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
    const std::uint64_t dims = rd.u64();
    if (dims > 16) rd.fail("parameter " + std::to_string(i) + " has " + std::to_string(dims) + " dimensions");
    Shape shape;
    for (std::uint64_t d = 0; d < dims; ++d) shape.push_back(rd.i64());
    if (name != params[i]->name || shape != params[i]->value.shape()) {
      rd.fail("parameter " + std::to_string(i) + " is '" + name + "' " + shape_to_string(shape) +
              ", expected '" + params[i]->name + "' " +
              shape_to_string(params[i]->value.shape()));
    }
    values[i] = rd.floats();
    if (static_cast<std::int64_t>(values[i].size()) != params[i]->value.numel()) {
      rd.fail("parameter '" + name + "' holds " + std::to_string(values[i].size()) +
              " values, expected " + std::to_string(params[i]->value.numel()));
    }
    names[name] = params[i];
  }
  const std::string kind = rd.str();
  const std::int64_t opt_step = rd.i64();
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

}  // namespace pipetrain::runtime
