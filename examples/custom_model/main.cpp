// A model of your own through the pipeline: an MLP classifying float features, its width
// changing at every cut, trained with ZB-H1 on 2 ranks (threads, or processes under mpirun).
//   custom_model                           # 2 in-process ranks
//   mpirun -n 2 custom_model --mpi         # one process per rank
//   custom_model --ranks 1                 # one device, for comparison: the same losses
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "pipetrain/nn/layers.h"
#include "pipetrain/pipeline.h"

using namespace pipetrain;

int main(int argc, char** argv) {
  const bool mpi = argc > 1 && std::strcmp(argv[1], "--mpi") == 0;
  const int ranks = argc > 2 && std::strcmp(argv[1], "--ranks") == 0 ? std::atoi(argv[2]) : 2;

  // Data: 512 samples of 16 features; the label is the sign pattern of two fixed projections.
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> x(512 * 16);
  std::vector<std::int32_t> y(512);
  for (auto& v : x) v = normal(rng);
  for (int i = 0; i < 512; ++i) {
    float a = 0, b = 0;
    for (int j = 0; j < 16; ++j) a += x[i * 16 + j] * (j % 3 - 1), b += x[i * 16 + j] * (j % 2);
    y[i] = (a > 0) + 2 * (b > 2);
  }
  const Tensor features = Tensor::from_vector(x, {512, 16});
  const Tensor labels = Tensor::from_vector(y, {512});

  ModelSpec model;  // 16 -> 64 -> 32 -> 4
  model.add<nn::Linear>(16, 64).add<nn::ReLU>().add<nn::Linear>(64, 32).add<nn::ReLU>();
  model.add<nn::Linear>(32, 4);

  PipelineOptions options;
  options.schedule = ranks > 1 ? "zb-h1" : "gpipe";
  options.pipeline = ranks;
  options.microbatches = 4;
  options.optimizer.lr = 3e-3;

  launch(ranks, mpi ? "mpi" : "inprocess", [&](Transport& transport) {
    Pipeline pipe(model, std::make_unique<nn::CrossEntropyLoss>(), options, transport);
    for (int step = 0; step < 200; ++step) {
      const StepResult r = pipe.train_step({features}, {labels});
      if (transport.rank() == 0 && step % 20 == 0) std::printf("step %3d loss %.6f\n", step, r.loss);
    }
    const EvalResult eval = pipe.eval_step({features}, {labels});
    if (!eval.outputs.empty()) {  // the rank holding the last stage
      int right = 0;
      const std::vector<float> logits = eval.outputs[0].to_vector<float>();
      for (int i = 0; i < 512; ++i) {
        const float* l = &logits[i * 4];
        right += static_cast<int>(std::max_element(l, l + 4) - l) == y[i];
      }
      std::printf("final loss %.6f accuracy %.3f\n", eval.loss, right / 512.0);
    }
  });
}
