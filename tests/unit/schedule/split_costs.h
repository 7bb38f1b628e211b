// Test helper: a cost model given by its F, I and W times (the full B = I + W) and a transfer
// time, the way the zero-bubble papers state their ratios ("F:I:W = 1:2:1").
#pragma once

#include "pipetrain/schedule/simulate.h"

namespace pipetrain::testing {

inline CostModel split_costs(double f, double i, double w, double latency = 0.0) {
  CostModel c;
  c.forward = f;
  c.backward_input = i;
  c.backward_weight = w;
  c.backward = i + w;
  c.latency = latency;
  return c;
}

}  // namespace pipetrain::testing
