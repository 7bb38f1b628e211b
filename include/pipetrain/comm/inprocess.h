// pipetrain/comm/inprocess.h: a world of ranks inside one process, one thread per rank.
//
// Every ordered pair of ranks has a mailbox (queues of posted sends and receives matched in
// order, under one mutex with a condition variable). Sends are rendezvous: a send completes
// when the receiver has posted the matching receive and the data has been copied into its
// destination, so a schedule that would deadlock under NCCL times out here too. Collectives sum
// in rank order, so every member gets bit-identical results. abort() on any rank sets a flag
// shared by the world and wakes every waiter. See transport.h for the semantics.
#pragma once

#include <memory>
#include <vector>

#include "pipetrain/comm/transport.h"

namespace pipetrain {

/// How many processes an MPI launcher started beside this one, read from the launcher's
/// environment (OMPI_COMM_WORLD_SIZE, PMI_SIZE, MV2_COMM_WORLD_SIZE; no MPI call): size 1 and
/// no variable when the process was not started by one.
struct LauncherWorld {
  int size = 1;
  const char* variable = "";
};
LauncherWorld mpi_launcher_world();

/// world_size Transports, element r being rank r; drive each from its own thread. The world's
/// shared state lives as long as any of them. Throws InvalidArgument when world_size < 1:
///   "[make_inprocess_world] world_size=0 must be >= 1"
/// and when this process is one of several started by an MPI launcher (mpirun -n 2 would run
/// the whole job once per process, the copies writing the same files):
///   "[make_inprocess_world] this process is one of 2 started by an MPI launcher
///    (OMPI_COMM_WORLD_SIZE=2), but an in-process world runs every rank as a thread of one
///    process, so each process would run the whole job: use the MPI transport
///    (make_transport("mpi")) or start a single process"
std::vector<std::unique_ptr<Transport>> make_inprocess_world(int world_size,
                                                             const TransportOptions& options = {});

}  // namespace pipetrain
