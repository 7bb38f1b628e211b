#include "loss_curve.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <limits>
#include <sstream>
#include <stdexcept>

namespace train_gpt {

std::string loss_csv(const std::vector<LossPoint>& points) {
  std::ostringstream out;
  out << "step,train_loss,val_loss,lr\n" << std::setprecision(6);
  for (const LossPoint& p : points) {
    out << p.step << ',' << p.train_loss << ',';
    if (p.val_loss) out << *p.val_loss;
    out << ',' << p.lr << '\n';
  }
  return out.str();
}

namespace {

// A "nice" tick spacing (1, 2 or 5 times a power of ten) giving about `target` ticks.
double nice_step(double range, int target) {
  if (!(range > 0)) return 1.0;
  const double raw = range / target;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double r = raw / magnitude;
  const double nice = r < 1.5 ? 1.0 : r < 3.5 ? 2.0 : r < 7.5 ? 5.0 : 10.0;
  return nice * magnitude;
}

std::string escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace

std::string loss_svg(const std::vector<LossPoint>& points, std::optional<double> reference,
                     const std::string& reference_label, const std::string& title) {
  constexpr double kWidth = 800, kHeight = 500;
  constexpr double kLeft = 80, kRight = 30, kTop = 50, kBottom = 70;
  const double plot_w = kWidth - kLeft - kRight, plot_h = kHeight - kTop - kBottom;

  double x_max = 1, y_min = std::numeric_limits<double>::infinity(), y_max = -y_min;
  for (const LossPoint& p : points) {
    x_max = std::max(x_max, static_cast<double>(p.step));
    y_min = std::min(y_min, p.train_loss);
    y_max = std::max(y_max, p.train_loss);
    if (p.val_loss) {
      y_min = std::min(y_min, *p.val_loss);
      y_max = std::max(y_max, *p.val_loss);
    }
  }
  if (reference) {
    y_min = std::min(y_min, *reference);
    y_max = std::max(y_max, *reference);
  }
  if (!std::isfinite(y_min) || !std::isfinite(y_max)) y_min = 0, y_max = 1;
  const double y_tick = nice_step(y_max - y_min, 6);
  y_min = std::floor(y_min / y_tick) * y_tick;
  y_max = std::ceil(y_max / y_tick) * y_tick;
  if (y_max <= y_min) y_max = y_min + y_tick;
  const double x_tick = nice_step(x_max, 8);
  x_max = std::ceil(x_max / x_tick) * x_tick;

  auto sx = [&](double x) { return kLeft + plot_w * x / x_max; };
  auto sy = [&](double y) { return kTop + plot_h * (1.0 - (y - y_min) / (y_max - y_min)); };

  std::ostringstream svg;
  svg << std::fixed << std::setprecision(1);
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kWidth << "\" height=\""
      << kHeight << "\" font-family=\"sans-serif\" font-size=\"13\">\n";
  svg << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  svg << "<text x=\"" << kWidth / 2 << "\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">"
      << escape(title) << "</text>\n";
  // Grid and ticks.
  for (double y = y_min; y <= y_max + 1e-9 * y_tick; y += y_tick) {
    svg << "<line x1=\"" << kLeft << "\" y1=\"" << sy(y) << "\" x2=\"" << kLeft + plot_w
        << "\" y2=\"" << sy(y) << "\" stroke=\"#e5e5e5\"/>\n";
    svg << "<text x=\"" << kLeft - 8 << "\" y=\"" << sy(y) + 4 << "\" text-anchor=\"end\">"
        << std::setprecision(y_tick < 1 ? 1 : 0) << y << std::setprecision(1) << "</text>\n";
  }
  for (double x = 0; x <= x_max + 1e-9 * x_tick; x += x_tick) {
    svg << "<line x1=\"" << sx(x) << "\" y1=\"" << kTop << "\" x2=\"" << sx(x) << "\" y2=\""
        << kTop + plot_h << "\" stroke=\"#e5e5e5\"/>\n";
    svg << "<text x=\"" << sx(x) << "\" y=\"" << kTop + plot_h + 20
        << "\" text-anchor=\"middle\">" << std::setprecision(0) << x << std::setprecision(1)
        << "</text>\n";
  }
  // Axes and their labels.
  svg << "<line x1=\"" << kLeft << "\" y1=\"" << kTop + plot_h << "\" x2=\"" << kLeft + plot_w
      << "\" y2=\"" << kTop + plot_h << "\" stroke=\"black\"/>\n";
  svg << "<line x1=\"" << kLeft << "\" y1=\"" << kTop << "\" x2=\"" << kLeft << "\" y2=\""
      << kTop + plot_h << "\" stroke=\"black\"/>\n";
  svg << "<text x=\"" << kLeft + plot_w / 2 << "\" y=\"" << kHeight - 20
      << "\" text-anchor=\"middle\">step (optimizer updates)</text>\n";
  svg << "<text transform=\"translate(22," << kTop + plot_h / 2
      << ") rotate(-90)\" text-anchor=\"middle\">loss (nats per token)</text>\n";

  if (reference) {
    svg << "<line x1=\"" << kLeft << "\" y1=\"" << sy(*reference) << "\" x2=\"" << kLeft + plot_w
        << "\" y2=\"" << sy(*reference) << "\" stroke=\"#888\" stroke-dasharray=\"6,4\"/>\n";
    svg << "<text x=\"" << kLeft + plot_w - 4 << "\" y=\"" << sy(*reference) - 6
        << "\" text-anchor=\"end\" fill=\"#555\">" << escape(reference_label) << "</text>\n";
  }
  std::ostringstream train_line, val_line;
  train_line << std::fixed << std::setprecision(1);
  val_line << std::fixed << std::setprecision(1);
  std::string val_marks;
  for (const LossPoint& p : points) {
    const double x = sx(static_cast<double>(p.step));
    train_line << x << ',' << sy(p.train_loss) << ' ';
    if (p.val_loss) {
      val_line << x << ',' << sy(*p.val_loss) << ' ';
      std::ostringstream mark;
      mark << std::fixed << std::setprecision(1) << "<circle cx=\"" << x << "\" cy=\""
           << sy(*p.val_loss) << "\" r=\"3\" fill=\"#d95f02\"/>\n";
      val_marks += mark.str();
    }
  }
  svg << "<polyline fill=\"none\" stroke=\"#1b6ac9\" stroke-width=\"1.5\" points=\""
      << train_line.str() << "\"/>\n";
  svg << "<polyline fill=\"none\" stroke=\"#d95f02\" stroke-width=\"2\" points=\""
      << val_line.str() << "\"/>\n"
      << val_marks;
  // Legend.
  const double lx = kLeft + plot_w - 170, ly = kTop + 12;
  svg << "<rect x=\"" << lx - 10 << "\" y=\"" << ly - 14 << "\" width=\"175\" height=\"48\" "
      << "fill=\"white\" stroke=\"#ccc\"/>\n";
  svg << "<line x1=\"" << lx << "\" y1=\"" << ly - 4 << "\" x2=\"" << lx + 24 << "\" y2=\""
      << ly - 4 << "\" stroke=\"#1b6ac9\" stroke-width=\"2\"/>\n";
  svg << "<text x=\"" << lx + 32 << "\" y=\"" << ly << "\">train loss</text>\n";
  svg << "<line x1=\"" << lx << "\" y1=\"" << ly + 18 << "\" x2=\"" << lx + 24 << "\" y2=\""
      << ly + 18 << "\" stroke=\"#d95f02\" stroke-width=\"2\"/>\n";
  svg << "<text x=\"" << lx + 32 << "\" y=\"" << ly + 22 << "\">validation loss</text>\n";
  svg << "</svg>\n";
  return svg.str();
}

void write_text_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error("cannot open '" + path.string() + "' for writing");
  out << text;
  if (!out) throw std::runtime_error("cannot write '" + path.string() + "'");
}

}  // namespace train_gpt
