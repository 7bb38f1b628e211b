#include "pipetrain/pipeline.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <map>
#include <sstream>
#include <thread>

#include "pipetrain/comm/inprocess.h"
#include "pipetrain/comm/mpi.h"
#include "pipetrain/error.h"
#include "pipetrain/nn/init.h"
#include "pipetrain/runtime/checkpoint.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/passes.h"
#include "pipetrain/schedule/simulate.h"

namespace pipetrain {

namespace {

// partition_model() with the parameter counts already known (kParameters) or not needed.
runtime::Partition partition_counted(const ModelSpec& model, const std::vector<double>* counts,
                                     int num_stages, const PartitionOptions& options) {
  constexpr const char* kFn = "partition_model";
  const int layers = static_cast<int>(model.size());
  PIPETRAIN_CHECK_ARG(num_stages >= 1, kFn, "num_stages=", num_stages, " must be >= 1");
  PIPETRAIN_CHECK_ARG(layers >= num_stages, kFn, "the model has ", layers,
                      " layers, fewer than num_stages=", num_stages,
                      ": each stage needs at least one layer");
  using Method = PartitionOptions::Method;
  std::vector<double> costs;
  switch (options.method) {
    case Method::kParameters:
      costs = counts != nullptr ? *counts : model.parameter_counts();
      // A parameterless layer (ReLU) still takes time: count it as a little work so that the
      // cut does not pile them all on one stage.
      for (double& c : costs) c = std::max(c, 1.0);
      break;
    case Method::kUniform:
      costs.assign(static_cast<std::size_t>(layers), 1.0);
      break;
    case Method::kCost:
    case Method::kCounts:
      PIPETRAIN_CHECK_ARG(options.method == PartitionOptions::Method::kCounts ||
                              !options.layer_costs.empty(),
                          kFn, "method kCost needs layer_costs (one per layer), got none");
      costs = options.layer_costs.empty() ? std::vector<double>(layers, 1.0) : options.layer_costs;
      PIPETRAIN_CHECK_ARG(static_cast<int>(costs.size()) == layers, kFn, "layer_costs has ",
                          costs.size(), " entries, the model has ", layers, " layers");
      break;
  }
  if (options.method == Method::kCounts) {
    PIPETRAIN_CHECK_ARG(static_cast<int>(options.layers_per_stage.size()) == num_stages, kFn,
                        "layers_per_stage has ", options.layers_per_stage.size(),
                        " entries, expected num_stages=", num_stages);
    return runtime::partition_from_counts(costs, options.layers_per_stage);
  }
  return runtime::partition_layers(costs, num_stages);
}

}  // namespace

runtime::Partition partition_model(const ModelSpec& model, int num_stages,
                                   const PartitionOptions& options) {
  return partition_counted(model, nullptr, num_stages, options);
}

// ---- profiling and memory -----------------------------------------------------------------

std::vector<LayerProfile> profile_layers(const ModelSpec& model,
                                         const std::vector<TensorSpec>& inputs, int repeats) {
  constexpr const char* kFn = "profile_layers";
  PIPETRAIN_CHECK_ARG(repeats >= 1, kFn, "repeats=", repeats, " must be >= 1");
  PIPETRAIN_CHECK_ARG(inputs.size() == 1, kFn, "got ", inputs.size(),
                      " input specs; a ModelSpec's layers take one tensor");
  using Clock = std::chrono::steady_clock;
  std::vector<LayerProfile> out;
  TensorSpec spec = inputs[0];
  for (int i = 0; i < static_cast<int>(model.size()); ++i) {
    // One layer at a time keeps the peak to one layer's parameters and activations.
    std::unique_ptr<nn::Sequential> stage = model.build(i, i + 1);
    nn::Layer& layer = *stage->layers()[0];
    const TensorSpec out_spec = layer.output_spec(spec);
    const Tensor x = Tensor::zeros(spec.shape, spec.dtype);
    const Tensor dy = Tensor::zeros(out_spec.shape, out_spec.dtype);
    LayerProfile p;
    p.parameters = nn::count_parameters(layer.parameters());
    std::vector<double> seconds;
    for (int r = 0; r < repeats; ++r) {
      const auto t0 = Clock::now();
      layer.forward(0, x);
      const std::size_t after_forward = layer.bytes_kept();
      layer.backward_input(0, is_differentiable(out_spec.dtype) ? dy : Tensor());
      // Between I and W a layer may keep more (the output gradient W needs) than after F.
      if (r == 0) p.bytes_kept = std::max(after_forward, layer.bytes_kept());
      layer.backward_weight(0);
      seconds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::sort(seconds.begin(), seconds.end());
    p.seconds = seconds[seconds.size() / 2];
    for (nn::Parameter* q : layer.parameters()) q->grad.zero();
    out.push_back(p);
    spec = out_spec;
  }
  return out;
}

std::vector<RankMemory> estimate_memory(const std::vector<LayerProfile>& profile,
                                        const runtime::Partition& partition,
                                        const Schedule& schedule,
                                        OptimizerOptions::Kind optimizer) {
  constexpr const char* kFn = "estimate_memory";
  PIPETRAIN_CHECK_ARG(partition.num_stages() == schedule.num_stages(), kFn, "the partition has ",
                      partition.num_stages(), " stages, the schedule ", schedule.num_stages());
  PIPETRAIN_CHECK_ARG(!partition.bounds.empty() &&
                          partition.bounds.back() == static_cast<int>(profile.size()),
                      kFn, "the partition covers ",
                      partition.bounds.empty() ? 0 : partition.bounds.back(),
                      " layers, the profile has ", profile.size());
  const MemoryProfile held = analyze_memory(schedule.has_comm() ? strip_comm(schedule) : schedule);
  std::vector<RankMemory> out(static_cast<std::size_t>(schedule.num_ranks()));
  for (int r = 0; r < schedule.num_ranks(); ++r) {
    RankMemory& m = out[static_cast<std::size_t>(r)];
    std::int64_t largest = 0;
    for (int s : schedule.stages_of_rank(r)) {
      std::int64_t kept = 0;
      for (int l = partition.bounds[s]; l < partition.bounds[s + 1]; ++l) {
        const LayerProfile& p = profile[static_cast<std::size_t>(l)];
        m.parameters += 4 * p.parameters;
        kept += static_cast<std::int64_t>(p.bytes_kept);
      }
      largest = std::max(largest, kept);
    }
    m.gradients = m.parameters;
    m.optimizer = optimizer == OptimizerOptions::Kind::kAdamW ? 2 * m.parameters : 0;
    m.peak_in_flight = held.peak_held[static_cast<std::size_t>(r)];
    m.activations = largest * m.peak_in_flight;
  }
  return out;
}

// ---- Pipeline ------------------------------------------------------------------------------

namespace {

std::unique_ptr<optim::Optimizer> make_optimizer(const OptimizerOptions& o,
                                                 std::vector<nn::Parameter*> params) {
  if (o.kind == OptimizerOptions::Kind::kSgd) {
    return std::make_unique<optim::Sgd>(std::move(params), o.sgd);
  }
  return std::make_unique<optim::AdamW>(std::move(params), o.adamw);
}

// A text every rank computes alike from the options, to check that all ranks agree.
std::string canonical(const PipelineOptions& o, const Schedule& schedule,
                      const runtime::Partition& partition, const std::string& loss) {
  std::ostringstream out;
  out << "schedule=" << schedule.name() << " P=" << o.pipeline << " D=" << o.data_parallel
      << " M=" << schedule.num_microbatches() << " v=" << schedule.stages_per_rank()
      << " cut=" << partition.to_string() << " loss=" << loss
      << " optimizer=" << static_cast<int>(o.optimizer.kind)
      << " ckpt=" << o.activation_checkpointing << " clip=" << o.executor.max_grad_norm
      << " model=" << o.model_id;
  return out.str();
}

}  // namespace

Pipeline::Pipeline(const ModelSpec& model, std::unique_ptr<nn::Loss> loss,
                   PipelineOptions options, Transport& transport)
    : options_(std::move(options)), transport_(transport), loss_(std::move(loss)) {
  constexpr const char* kFn = "Pipeline";
  const PipelineOptions& o = options_;
  PIPETRAIN_CHECK_ARG(loss_ != nullptr, kFn, "the loss is null");
  PIPETRAIN_CHECK_ARG(o.pipeline >= 1 && o.data_parallel >= 1, kFn, "pipeline=", o.pipeline,
                      " and data_parallel=", o.data_parallel, " must be >= 1");
  PIPETRAIN_CHECK_ARG(
      static_cast<std::int64_t>(o.pipeline) * o.data_parallel == transport.world_size(), kFn,
      "pipeline=", o.pipeline, " x data_parallel=", o.data_parallel, " = ",
      static_cast<std::int64_t>(o.pipeline) * o.data_parallel, " ranks, the transport has ",
      transport.world_size());
  check_schedule_size(kFn, o.pipeline, o.stages_per_rank, o.microbatches);
  // The executor runs one action at a time: overlapped slots run in sequence.
  Schedule compute = expand_overlap(
      o.custom_schedule ? *o.custom_schedule
                        : make_schedule(o.schedule, o.pipeline, o.microbatches, o.stages_per_rank));
  PIPETRAIN_CHECK_ARG(compute.num_ranks() == o.pipeline, kFn, "the schedule has ",
                      compute.num_ranks(), " ranks, pipeline=", o.pipeline);
  Schedule schedule = compute.num_ranks() > 1 && !compute.has_comm() ? lower(compute) : compute;
  // Counting parameters builds every layer whose count the spec does not give: only when needed.
  const bool need_counts = o.partition.method == PartitionOptions::Method::kParameters ||
                           o.model_id.empty();
  const std::vector<double> counts = need_counts ? model.parameter_counts() : std::vector<double>();
  partition_ = partition_counted(model, need_counts ? &counts : nullptr, schedule.num_stages(),
                                 o.partition);
  const runtime::Topology topology(transport.world_size(), o.pipeline, o.data_parallel);
  runtime::check_same_configuration(transport,
                                    canonical(o, schedule, partition_, loss_->name()));

  std::vector<Stage*> stage_ptrs;
  std::vector<nn::Parameter*> params;
  for (int s : schedule.stages_of_rank(topology.pp_index(transport.rank()))) {
    const auto i = static_cast<std::size_t>(s);
    stages_.push_back(model.build(partition_.bounds[i], partition_.bounds[i + 1],
                                  o.activation_checkpointing));
    stage_ptrs.push_back(stages_.back().get());
    for (nn::Parameter* p : stages_.back()->parameters()) params.push_back(p);
  }
  // The model hash ties checkpoints to the model: the parameter count of every layer (the
  // loader checks each parameter's name and shape besides).
  std::string signature = o.model_id;
  if (signature.empty()) {
    for (const double c : counts) signature += std::to_string(c) + ";";
  }
  model_hash_ = runtime::fnv1a64(signature);
  optimizer_ = make_optimizer(o.optimizer, params);
  executor_ = std::make_unique<runtime::Executor>(std::move(schedule), topology, transport,
                                                  stage_ptrs, loss_.get(), optimizer_.get(),
                                                  o.executor);
  // The optimizer is built from exactly the stages' parameters, so none can be forgotten; what
  // can still go wrong is a stage listing one parameter twice (it would be updated twice).
  PIPETRAIN_CHECK_ARG(executor_->parameters().size() == optimizer_->parameters().size(), kFn,
                      "the stages hold ", executor_->parameters().size(),
                      " distinct parameters, the optimizer ", optimizer_->parameters().size(),
                      ": a parameter is listed twice by a stage");
}

Pipeline::~Pipeline() = default;

std::int64_t Pipeline::steps_done() const { return executor_->steps_done(); }
const Schedule& Pipeline::schedule() const { return executor_->schedule(); }
const runtime::Topology& Pipeline::topology() const { return executor_->topology(); }
const std::vector<nn::Parameter*>& Pipeline::parameters() const {
  return executor_->parameters();
}

std::vector<Microbatch> Pipeline::split(const TensorList& inputs, const TensorList& targets,
                                        const char* fn, bool train) {
  try {
    return split_rows(inputs, targets, fn);
  } catch (const InvalidArgument&) {
    // Take part in the executor's agreement anyway (with no microbatches, which it refuses), so
    // that every rank refuses this call together even when the others' batches split.
    try {
      if (train) {
        executor_->step({}, 0.0);
      } else {
        executor_->evaluate({});
      }
    } catch (const InvalidArgument&) {
    }
    throw;
  }
}

std::vector<Microbatch> Pipeline::split_rows(const TensorList& inputs, const TensorList& targets,
                                             const char* fn) const {
  PIPETRAIN_CHECK_ARG(!inputs.empty(), fn, "no input tensors");
  const int d = options_.data_parallel;
  const int m = executor_->schedule().num_microbatches();
  auto rows_of = [&](const Tensor& t, const char* what, std::size_t i) {
    PIPETRAIN_CHECK_ARG(t.defined() && t.dim() >= 1, fn, what, " ", i,
                        " must be a defined tensor with a batch dimension");
    return t.size(0);
  };
  const std::int64_t n = rows_of(inputs[0], "input", 0);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    PIPETRAIN_CHECK_ARG(rows_of(inputs[i], "input", i) == n, fn, "input ", i, " has ",
                        inputs[i].size(0), " rows, input 0 has ", n);
  }
  for (std::size_t i = 0; i < targets.size(); ++i) {
    PIPETRAIN_CHECK_ARG(rows_of(targets[i], "target", i) == n, fn, "target ", i, " has ",
                        targets[i].size(0), " rows, the inputs have ", n);
  }
  PIPETRAIN_CHECK_ARG(n > 0 && n % (static_cast<std::int64_t>(d) * m) == 0, fn, "the batch has ",
                      n, " rows, not a positive multiple of data_parallel x microbatches = ", d,
                      " x ", m);
  const std::int64_t per_replica = n / d, rows = per_replica / m;
  const std::int64_t base = topology().dp_index(transport_.rank()) * per_replica;
  std::vector<Microbatch> out(static_cast<std::size_t>(m));
  for (int k = 0; k < m; ++k) {
    const std::int64_t begin = base + k * rows;
    for (const Tensor& t : inputs) out[k].inputs.push_back(t.slice(begin, begin + rows));
    for (const Tensor& t : targets) out[k].targets.push_back(t.slice(begin, begin + rows));
  }
  return out;
}

StepResult Pipeline::train_step(const TensorList& inputs, const TensorList& targets, double lr) {
  constexpr const char* kFn = "Pipeline::train_step";
  const std::vector<Microbatch> microbatches = split(inputs, targets, kFn, /*train=*/true);
  return executor_->step(microbatches, lr < 0 ? options_.optimizer.lr : lr);
}

EvalResult Pipeline::eval_step(const TensorList& inputs, const TensorList& targets) {
  constexpr const char* kFn = "Pipeline::eval_step";
  const std::vector<Microbatch> microbatches = split(inputs, targets, kFn, /*train=*/false);
  runtime::EvalStats stats = executor_->evaluate(microbatches);
  EvalResult result;
  result.loss = stats.loss;
  result.microbatch_losses = std::move(stats.microbatch_losses);
  if (!stats.outputs.empty()) {
    // Concatenate each output along dim 0 (the microbatches are consecutive rows).
    for (std::size_t i = 0; i < stats.outputs[0].size(); ++i) {
      PIPETRAIN_CHECK_ARG(stats.outputs[0][i].dim() >= 1, "Pipeline::eval_step", "output ", i,
                          " is 0-d: eval_step concatenates outputs along their batch dimension "
                          "(use Executor::evaluate for per-microbatch outputs)");
      Shape shape = stats.outputs[0][i].shape();
      std::int64_t rows = 0;
      for (const TensorList& mb : stats.outputs) rows += mb[i].size(0);
      shape[0] = rows;
      Tensor all = Tensor::empty(shape, stats.outputs[0][i].dtype(), stats.outputs[0][i].device());
      std::int64_t at = 0;
      for (const TensorList& mb : stats.outputs) {
        all.slice(at, at + mb[i].size(0)).copy_from(mb[i]);
        at += mb[i].size(0);
      }
      result.outputs.push_back(std::move(all));
    }
  }
  return result;
}

std::filesystem::path Pipeline::save(const std::filesystem::path& save_dir,
                                     const data::SamplerState& sampler) {
  const runtime::Topology& topo = topology();
  const Schedule& sched = schedule();
  const std::int64_t step = steps_done();
  const int num_stages = sched.num_stages();
  const std::filesystem::path staging = runtime::checkpoint_staging_dir(save_dir, step, num_stages);
  if (topo.dp_index(transport_.rank()) == 0) {  // replicas are identical: replica 0 writes
    const std::vector<int> mine = sched.stages_of_rank(topo.pp_index(transport_.rank()));
    for (std::size_t i = 0; i < stages_.size(); ++i) {
      runtime::save_stage_checkpoint(staging, mine[i], num_stages, *stages_[i], *optimizer_,
                                     runtime::CheckpointMeta{step, model_hash_, sampler});
    }
  }
  transport_.barrier();
  // Rank 0 commits; the folder it chose (step-<n>, or step-<n>-stages-<S> when step-<n> holds
  // another cut) reaches every rank through the all-reduce, which also ends the save.
  Tensor suffixed = Tensor::zeros({1}, DType::kInt32);
  const std::string plain = "step-" + std::to_string(step);
  if (transport_.rank() == 0) {
    const std::filesystem::path done = runtime::commit_checkpoint(save_dir, step, num_stages);
    suffixed.data<std::int32_t>()[0] = done.filename() == plain ? 0 : 1;
  }
  transport_.all_reduce_sum(suffixed);
  return save_dir / (suffixed.data<std::int32_t>()[0] == 0
                         ? plain
                         : plain + "-stages-" + std::to_string(num_stages));
}

runtime::LoadedCheckpoint Pipeline::load(const std::filesystem::path& step_dir) {
  std::vector<Stage*> stages;
  for (auto& s : stages_) stages.push_back(s.get());
  const runtime::LoadedCheckpoint loaded =
      runtime::load_checkpoint_into_stage(step_dir, stages, *optimizer_, model_hash_);
  executor_->set_steps_done(loaded.meta.step);
  transport_.barrier();
  return loaded;
}

// ---- launch --------------------------------------------------------------------------------

void launch(int world_size, const std::string& transport,
            const std::function<void(Transport&)>& body, const TransportOptions& options) {
  constexpr const char* kFn = "launch";
  PIPETRAIN_CHECK_ARG(world_size >= 1, kFn, "world_size=", world_size, " must be >= 1");
  if (transport == "mpi") {
    MpiSession session;
    PIPETRAIN_CHECK_ARG(session.world_size() == world_size, kFn, "world_size=", world_size,
                        " but the MPI job has ", session.world_size(),
                        " processes: start it with mpirun -n ", world_size);
    auto t = make_transport("mpi", options);
    try {
      body(*t);
    } catch (const std::exception& e) {
      t->abort(e.what());
      throw;
    }
    return;
  }
  PIPETRAIN_CHECK_ARG(transport == "inprocess", kFn, "transport '", transport,
                      "' is not one of inprocess, mpi");
  auto transports = make_inprocess_world(world_size, options);
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(world_size));
  std::vector<char> aborted(static_cast<std::size_t>(world_size), 0);
  std::vector<std::thread> threads;
  for (int r = 0; r < world_size; ++r) {
    threads.emplace_back([&, r] {
      try {
        body(*transports[r]);
      } catch (const AbortedError& e) {
        errors[r] = std::current_exception();
        aborted[r] = 1;
      } catch (const std::exception& e) {
        errors[r] = std::current_exception();
        transports[r]->abort(e.what());
      } catch (...) {
        errors[r] = std::current_exception();
        transports[r]->abort("unknown exception");
      }
    });
  }
  for (auto& t : threads) t.join();
  // The root cause: the first rank that failed on its own, else the first failure.
  for (int r = 0; r < world_size; ++r) {
    if (errors[r] && !aborted[r]) std::rethrow_exception(errors[r]);
  }
  for (int r = 0; r < world_size; ++r) {
    if (errors[r]) std::rethrow_exception(errors[r]);
  }
}

}  // namespace pipetrain
