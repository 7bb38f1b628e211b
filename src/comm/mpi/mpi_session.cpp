#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>

#include "../comm_util.h"
#include "mpi_check.h"
#include "pipetrain/comm/mpi.h"

namespace pipetrain {

namespace detail {

const char* shown_source_path(const char* file) {
  if (file == nullptr) return "?";
#ifdef PIPETRAIN_SOURCE_ROOT
  // Compiled in by CMake as "<root>/": the usual case, a __FILE__ of this project.
  constexpr std::string_view root = PIPETRAIN_SOURCE_ROOT;
  if (!root.empty() && std::strncmp(file, root.data(), root.size()) == 0) {
    return file + root.size();
  }
#endif
  // Elsewhere (an installed copy, a prefix map): from the last "src/" or "tests/" component on,
  // so a checkout under /home/me/src/pipetrain still shows "src/comm/...".
  const char* shown = nullptr;
  for (const char* marker : {"src/", "tests/"}) {
    for (const char* p = std::strstr(file, marker); p != nullptr; p = std::strstr(p + 1, marker)) {
      if ((p == file || p[-1] == '/') && (shown == nullptr || p > shown)) shown = p;
    }
  }
  return shown != nullptr ? shown : file;
}

void throw_mpi_error(const char* call, int code, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) {
    std::snprintf(text, sizeof text, "MPI error code %d", code);
  }
  int rank = -1;
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::string what = message("mpi", "rank ", rank, ": ", call, " failed: ", text, " (",
                             shown_source_path(file), ':', line, ')');
  note_mpi_failure(what);
  throw CommError(std::move(what));
}

namespace {

struct FailureRecord {
  std::mutex mutex;
  bool failed = false;
  bool unsafe = false;
  std::string text;
};

FailureRecord& record() {
  static FailureRecord* r = new FailureRecord;  // never destroyed: usable until the very end
  return *r;
}

// The failure text on one line: messages of the runtime span several lines (the errors, each
// starting with "[function]", then the schedule rows "rank 0: 0F0 ..."); the session's last
// word keeps the first line and the error lines.
std::string one_line(const std::string& text, std::size_t limit = 800) {
  std::string out;
  std::size_t begin = 0;
  for (int index = 0; begin <= text.size(); ++index) {
    std::size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(begin, end - begin);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (index == 0 || (!line.empty() && line.front() == '[')) {
      if (!out.empty()) out += ' ';
      out += line;
    }
    begin = end + 1;
  }
  if (out.size() > limit) out = out.substr(0, limit) + " ...";
  return out;
}

// The communicator of the exit vote, duplicated from MPI_COMM_WORLD when the owning session
// starts (every rank is there then), with MPI_ERRORS_RETURN.
MPI_Comm exit_comm = MPI_COMM_NULL;

}  // namespace

void note_mpi_failure(std::string_view text) noexcept {
  try {
    FailureRecord& r = record();
    std::lock_guard lock(r.mutex);
    if (r.failed) return;
    r.failed = true;
    r.text = std::string(text);
  } catch (...) {  // out of memory: the flag is what matters
    record().failed = true;
  }
}

void note_mpi_unsafe() noexcept {
  FailureRecord& r = record();
  std::lock_guard lock(r.mutex);
  r.unsafe = true;
}

std::string mpi_failure_text() {
  FailureRecord& r = record();
  std::lock_guard lock(r.mutex);
  return r.text;
}

bool mpi_failed() noexcept {
  FailureRecord& r = record();
  std::lock_guard lock(r.mutex);
  return r.failed;
}

bool mpi_unsafe() noexcept {
  FailureRecord& r = record();
  std::lock_guard lock(r.mutex);
  return r.unsafe;
}

}  // namespace detail

MpiSession::MpiSession(int* argc, char*** argv, ThreadLevel level)
    : uncaught_(std::uncaught_exceptions()) {
  int initialized = 0;
  PIPETRAIN_MPI_CHECK(MPI_Initialized(&initialized));
  if (!initialized) {
    const int wanted =
        level == ThreadLevel::kMultiple ? MPI_THREAD_MULTIPLE : MPI_THREAD_SERIALIZED;
    int provided = MPI_THREAD_SINGLE;
    PIPETRAIN_MPI_CHECK(MPI_Init_thread(argc, argv, wanted, &provided));
    if (provided < wanted) {
      MPI_Finalize();
      throw CommError(detail::message(
          "MpiSession", "asked MPI for thread level ",
          level == ThreadLevel::kMultiple ? "MPI_THREAD_MULTIPLE" : "MPI_THREAD_SERIALIZED",
          ", the library provides only level ", provided));
    }
    try {
      PIPETRAIN_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &detail::exit_comm));
      PIPETRAIN_MPI_CHECK(MPI_Comm_set_errhandler(detail::exit_comm, MPI_ERRORS_RETURN));
    } catch (...) {  // no destructor will run: end what this constructor began
      if (detail::exit_comm != MPI_COMM_NULL) MPI_Comm_free(&detail::exit_comm);
      MPI_Finalize();
      throw;
    }
    owns_ = true;
  }
  PIPETRAIN_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  PIPETRAIN_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size_));
}

MpiSession::~MpiSession() {
  if (!owns_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  if (std::uncaught_exceptions() > uncaught_) {
    detail::note_mpi_failure("an exception is unwinding through MpiSession");
  }
  // The exit vote: 0 nothing to report, 1 a failure, 2 unfinished work (finalize unsafe).
  const int mine = detail::mpi_unsafe() ? 2 : detail::mpi_failed() ? 1 : 0;
  int worst = 2;
  bool voted = false;
  MPI_Request request = MPI_REQUEST_NULL;
  if (detail::exit_comm != MPI_COMM_NULL &&
      MPI_Iallreduce(&mine, &worst, 1, MPI_INT, MPI_MAX, detail::exit_comm, &request) ==
          MPI_SUCCESS) {
    const auto deadline = std::chrono::steady_clock::now() + exit_grace_;
    for (int spins = 0;; ++spins) {
      int done = 0;
      if (MPI_Test(&request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) break;
      if (done) {
        voted = true;
        break;
      }
      if (mine != 0 && std::chrono::steady_clock::now() >= deadline) break;
      if (spins < 1000) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
  }
  if (voted && worst < 2) {
    MPI_Comm_free(&detail::exit_comm);
    MPI_Finalize();
    return;
  }
  // The vote's request (if unfinished) and whatever the transports left stay posted: MPI_Abort
  // does not look at them.
  std::string why;
  if (!voted) {
    why = "not every rank reached the end of its MPI session within " +
          detail::format_ms(exit_grace_);
  } else if (mine == 2) {
    why = "this rank left MPI operations unfinished";
  } else {
    why = "another rank left MPI operations unfinished";
  }
  const std::string failure = detail::mpi_failure_text();
  if (!failure.empty()) why += " after: " + failure;
  abort(1, why);
}

std::string MpiSession::failure() { return detail::mpi_failure_text(); }

void MpiSession::abort(int error_code, std::string_view reason) noexcept {
  try {
    const std::string line = detail::one_line(std::string(reason));
    std::fprintf(stderr, "[MpiSession] rank %d: ending the job with MPI_Abort(%d): %s\n", rank_,
                 error_code, line.c_str());
  } catch (...) {  // out of memory: abort without the line
  }
  std::fflush(stderr);
  mpi_abort_world(error_code);
}

void mpi_abort_world(int error_code) {
  MPI_Abort(MPI_COMM_WORLD, error_code);
  std::abort();  // MPI_Abort does not return; this satisfies [[noreturn]] if it ever did
}

}  // namespace pipetrain
