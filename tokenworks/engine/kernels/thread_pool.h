// The kernels' own threads: parallel_for with a waiting policy the engine sets step by step.
//
// OpenMP's threads (ATen's parallel_for, oneDNN) decide once, at process start, how long a
// thread that finished its share spins before it sleeps (GOMP_SPINCOUNT). Sleeping costs a
// futex wake-up at every parallel region, and a decode step of the tiny benchmark model has
// dozens: one stream decoded 2.3-2.5x slower streamed (OpenMP threads sleeping) than offline
// (spinning). Spinning costs the cores: at 32 concurrent streams over HTTP the server's own
// process and the client need them, and spinning OpenMP threads took 14% off the output
// rate. The right policy depends on the load, so the engine says before every step
// (model_runner.py) which threads run the kernels' parallel loops and how they wait: a step
// of a few rows, whose products are these kernels' too, runs on the threads here, which spin
// between its regions; a larger one, whose products are oneDNN's, runs on OpenMP's, so one
// pool of threads has the cores and the other sleeps.
#pragma once

#include <cstdint>
#include <functional>

namespace tokenworks {

// f(begin, end) over [begin, end) split in equal runs of at least `grain`, one per thread
// (at::get_num_threads() of them, the calling thread among them); inline when there is one
// thread, one run, or the caller is already inside a parallel region. Rethrows the first
// exception a run threw, after every run has ended. On OpenMP's threads (at::parallel_for)
// unless the engine chose the threads here.
void parallel_for(int64_t begin, int64_t end, int64_t grain, const std::function<void(int64_t, int64_t)>& f);

// own: the threads here run parallel_for, and one with nothing to do spins `spin_microseconds`
// before it sleeps; else OpenMP's threads run it (and these sleep).
void set_threads(bool own, int64_t spin_microseconds);
bool own_threads();
int64_t spin_microseconds();

}  // namespace tokenworks
