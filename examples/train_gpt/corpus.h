// train_gpt: where the training text comes from.
#pragma once

#include <filesystem>
#include <string>

namespace train_gpt {

/// The command that prints the whole King James Bible (Debian package bible-kjv).
inline constexpr const char* kKjvCommand = "bible -f gen1:1-rev22:21";

/// Removes the verse reference that starts each line of `bible -f` output ("Ge1:1 ",
/// "1Cor13:4 "); lines without one are kept as they are.
std::string strip_verse_references(const std::string& text);

/// Returns `cache`, first creating it (and its folder) from kKjvCommand's output with the verse
/// references stripped when it does not exist yet. Throws std::runtime_error when the command
/// fails or prints too little to be the whole Bible.
std::filesystem::path ensure_kjv_text(const std::filesystem::path& cache);

}  // namespace train_gpt
