#include "corpus.h"

#include <cctype>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace train_gpt {
namespace {

// A reference is [digit] letters digits ':' digits, then one space.
std::size_t reference_length(const std::string& line) {
  std::size_t i = 0;
  if (i < line.size() && std::isdigit(static_cast<unsigned char>(line[i]))) ++i;
  const std::size_t letters = i;
  while (i < line.size() && std::isalpha(static_cast<unsigned char>(line[i]))) ++i;
  if (i == letters) return 0;
  const std::size_t chapter = i;
  while (i < line.size() && std::isdigit(static_cast<unsigned char>(line[i]))) ++i;
  if (i == chapter || i >= line.size() || line[i] != ':') return 0;
  const std::size_t verse = ++i;
  while (i < line.size() && std::isdigit(static_cast<unsigned char>(line[i]))) ++i;
  if (i == verse || i >= line.size() || line[i] != ' ') return 0;
  return i + 1;
}

}  // namespace

std::string strip_verse_references(const std::string& text) {
  std::istringstream in(text);
  std::string out, line;
  out.reserve(text.size());
  while (std::getline(in, line)) {
    out.append(line, reference_length(line));
    out += '\n';
  }
  return out;
}

std::filesystem::path ensure_kjv_text(const std::filesystem::path& cache) {
  if (std::filesystem::exists(cache)) return cache;
  FILE* pipe = ::popen(kKjvCommand, "r");
  if (pipe == nullptr) throw std::runtime_error(std::string("cannot run '") + kKjvCommand + "'");
  std::string raw;
  char buffer[1 << 16];
  std::size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) raw.append(buffer, n);
  const int status = ::pclose(pipe);
  // The whole KJV is 31,102 verses and about 4.4 MB; anything much smaller is an error message
  // or a missing package.
  if (status != 0 || raw.size() < 4'000'000) {
    throw std::runtime_error(std::string("'") + kKjvCommand + "' exited with status " +
                             std::to_string(status) + " after printing " +
                             std::to_string(raw.size()) +
                             " bytes; install Debian package bible-kjv or pass --data FILE");
  }
  if (cache.has_parent_path()) std::filesystem::create_directories(cache.parent_path());
  const std::filesystem::path partial = cache.string() + ".partial";
  {
    std::ofstream out(partial, std::ios::binary | std::ios::trunc);
    out << strip_verse_references(raw);
    if (!out) throw std::runtime_error("cannot write '" + partial.string() + "'");
  }
  std::filesystem::rename(partial, cache);  // never leave a half-written cache behind
  return cache;
}

}  // namespace train_gpt
