#include "pipetrain/runtime/checkpoint.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
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
  const std::filesystem::path path = stage_checkpoint_path(dir, stage, num_stages);
  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (out) out.write(w.data().data(), static_cast<std::streamsize>(w.data().size()));
    out.flush();
    if (!out) {
      throw Error(detail::message("save_stage_checkpoint", "cannot write '", tmp.string(),
                                  "': ", std::strerror(errno)));
    }
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    throw Error(detail::message("save_stage_checkpoint", "cannot rename '", tmp.string(), "' to '",
                                path.string(), "': ", ec.message()));
  }
}

CheckpointMeta load_stage_checkpoint(const std::filesystem::path& dir, int stage, int num_stages,
                                     Stage& stage_object, optim::Optimizer& optimizer,
                                     std::uint64_t expected_model_hash) {
  const std::filesystem::path path = stage_checkpoint_path(dir, stage, num_stages);
  const std::string data = read_checked(path, "load_stage_checkpoint");
  Reader rd(data, data.size() - 8, path.string());
  rd.skip(sizeof kMagic + 8);
  const std::int64_t file_stage = rd.i64();
  const std::int64_t file_stages = rd.i64();
  if (file_stage != stage || file_stages != num_stages) {
    rd.fail("holds stage " + std::to_string(file_stage) + " of " + std::to_string(file_stages) +
            ", expected stage " + std::to_string(stage) + " of " + std::to_string(num_stages));
  }
  CheckpointMeta meta;
  meta.step = rd.i64();
  meta.model_hash = rd.u64();
  meta.sampler.seed = rd.u64();
  meta.sampler.epoch = rd.u64();
  meta.sampler.cursor = rd.u64();
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
    const std::uint64_t dims = rd.u64();
    if (dims > 16)
      rd.fail("parameter " + std::to_string(i) + " has " + std::to_string(dims) + " dimensions");
    Shape shape;
    for (std::uint64_t d = 0; d < dims; ++d) shape.push_back(rd.i64());
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
  // The files present, and the one number of stages they belong to.
  std::map<int, std::set<int>> found;  // num_stages -> stages
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    int s = -1, n = -1;
    if (std::sscanf(name.c_str(), "stage-%d-of-%d", &s, &n) == 2 && s >= 0 && n >= 1 &&
        stage_checkpoint_path(dir, s, n).filename() == entry.path().filename()) {
      found[n].insert(s);
    }
  }
  if (found.empty()) fail_at(dir, "holds no stage-<s>-of-<S>.ckpt file");
  if (found.size() > 1) {
    std::string sizes;
    for (auto it = found.begin(); it != found.end(); ++it) {
      sizes += (it == found.begin()            ? ""
                : std::next(it) == found.end() ? " and "
                                               : ", ") +
               std::to_string(it->first);
    }
    fail_at(dir, "holds checkpoints of " + sizes + " stages");
  }
  const int num_stages = found.begin()->first;
  for (int s = 0; s < num_stages; ++s) {
    if (found.begin()->second.count(s) == 0) {
      fail_at(stage_checkpoint_path(dir, s, num_stages), "missing (a checkpoint of " +
                                                             std::to_string(num_stages) +
                                                             " stages has one file per stage)");
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
    rd.skip(sizeof kMagic + 8);
    const std::int64_t file_stage = rd.i64();
    const std::int64_t file_stages = rd.i64();
    if (file_stage != s || file_stages != num_stages) {
      rd.fail("holds stage " + std::to_string(file_stage) + " of " + std::to_string(file_stages) +
              ", expected stage " + std::to_string(s) + " of " + std::to_string(num_stages));
    }
    CheckpointMeta m;
    m.step = rd.i64();
    m.model_hash = rd.u64();
    m.sampler.seed = rd.u64();
    m.sampler.epoch = rd.u64();
    m.sampler.cursor = rd.u64();
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
      const std::uint64_t dims = rd.u64();
      if (dims > 16) {
        rd.fail("parameter " + std::to_string(i) + " has " + std::to_string(dims) + " dimensions");
      }
      Shape shape;
      for (std::uint64_t d = 0; d < dims; ++d) shape.push_back(rd.i64());
      record(params, name, shape, wanted.count(name) > 0, path, "parameter",
             [&](std::vector<float>* out, std::uint64_t* n) { return rd.floats_hashed(out, n); });
      const Saved& got = params.at(name);
      if (static_cast<std::int64_t>(got.count) != shape_numel(shape)) {
        rd.fail("parameter '" + name + "' holds " + std::to_string(got.count) +
                " values, expected " + std::to_string(shape_numel(shape)));
      }
    }
    const std::string kind = rd.str();
    const std::int64_t step = rd.i64();
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
