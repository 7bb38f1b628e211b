// train_gpt: the loss curve, saved as CSV and drawn as an SVG plot.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace train_gpt {

struct LossPoint {
  std::int64_t step = 0;           ///< optimizer steps done when this was measured
  double train_loss = 0.0;         ///< mean training loss of that step (nats/token)
  std::optional<double> val_loss;  ///< validation loss, when evaluated at this step
  double lr = 0.0;
};

/// "step,train_loss,val_loss,lr" then one row per point; val_loss is empty when absent.
std::string loss_csv(const std::vector<LossPoint>& points);

/// An SVG line plot of train and validation loss against step, axes labelled, with an optional
/// dashed reference line (the unigram entropy) labelled `reference_label`.
std::string loss_svg(const std::vector<LossPoint>& points, std::optional<double> reference,
                     const std::string& reference_label, const std::string& title);

/// Writes `text` to `path`; throws std::runtime_error when it cannot.
void write_text_file(const std::filesystem::path& path, const std::string& text);

}  // namespace train_gpt
