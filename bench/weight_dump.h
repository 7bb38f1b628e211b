// weight_dump.h: the weight files the Python side-by-side scripts read
// (bench/pytorch_side_by_side.py, bench/torch_pipelining_side_by_side.py).
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "pipetrain/nn/parameter.h"

namespace bench {

// Writes base.manifest ("name numel weight_decay dims..." a line per parameter) and base.params
// (the values as fp32, in the manifest's order).
inline void write_weights(const std::string& base,
                          const std::vector<pipetrain::nn::Parameter*>& parameters) {
  std::ofstream manifest(base + ".manifest"), params(base + ".params", std::ios::binary);
  for (const auto* p : parameters) {
    manifest << p->name << ' ' << p->value.numel() << ' ' << (p->weight_decay ? 1 : 0);
    for (std::int64_t d : p->value.shape()) manifest << ' ' << d;
    manifest << '\n';
    const std::vector<float> v = p->value.to_vector<float>();
    params.write(reinterpret_cast<const char*>(v.data()),
                 static_cast<std::streamsize>(v.size() * sizeof(float)));
  }
}

}  // namespace bench
