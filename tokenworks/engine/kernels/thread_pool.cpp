// The kernels' thread pool (thread_pool.h says why it exists).
//
// One job at a time: the caller publishes it and bumps `generation_`, every worker takes its
// run (or none, when the job has fewer runs than threads) and counts itself off in
// `remaining_`, and the caller waits for that count to reach zero. Every worker counts off
// every job, so a job's fields never change under a worker still reading them. A worker with
// nothing to do spins on `generation_` for the spin time, then sleeps on it (a futex); the
// caller makes the wake-up system call only when a worker is asleep.

#include "thread_pool.h"

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <exception>
#include <mutex>
#include <vector>

namespace tokenworks {

namespace {

thread_local bool inside_pool_job = false;

void futex_wait(std::atomic<uint32_t>* word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futex_wake_all(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

class Pool {
 public:
  Pool() { pthread_atfork(nullptr, nullptr, [] { instance().forget_threads(); }); }

  static Pool& instance() {
    static Pool* pool = new Pool();  // never destroyed: no join racing interpreter teardown
    return *pool;
  }

  void run(int64_t begin, int64_t end, int64_t grain, const std::function<void(int64_t, int64_t)>& f) {
    const int64_t threads = at::get_num_threads();
    const int64_t range = end - begin;
    if (range <= 0) return;
    const int64_t length = std::max<int64_t>(std::max<int64_t>(grain, 1), (range + threads - 1) / threads);
    if (threads <= 1 || length >= range || inside_pool_job || at::in_parallel_region()) {
      f(begin, end);
      return;
    }
    std::lock_guard<std::mutex> one_job_at_a_time(job_mutex_);
    ensure_workers(threads - 1);
    job_ = &f;
    begin_ = begin;
    end_ = end;
    length_ = length;
    error_ = nullptr;
    remaining_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake_all(&generation_);
    inside_pool_job = true;
    try {
      f(begin, std::min(end, begin + length));
    } catch (...) {
      record_error(std::current_exception());
    }
    inside_pool_job = false;
    wait_for_workers();
    if (error_) std::rethrow_exception(error_);
  }

  std::atomic<int64_t> spin_ns{0};
  std::atomic<bool> own{false};

 private:
  void ensure_workers(int64_t count) {
    if (static_cast<int64_t>(workers_.size()) == count) return;
    stop_workers();
    stopping_.store(false);
    for (int64_t index = 1; index <= count; ++index) {
      pthread_t thread;
      // The job that follows may be published before the thread first runs: it starts from now.
      auto* argument = new Start{this, index, generation_.load()};
      pthread_create(&thread, nullptr, &Pool::start, argument);
      workers_.push_back(thread);
    }
  }

  void stop_workers() {
    if (workers_.empty()) return;
    stopping_.store(true);
    generation_.fetch_add(1, std::memory_order_seq_cst);
    futex_wake_all(&generation_);
    for (pthread_t thread : workers_) pthread_join(thread, nullptr);
    workers_.clear();
  }

  void forget_threads() {  // in a forked child, where the workers do not exist
    workers_.clear();
    sleepers_.store(0);
  }

  struct Start {
    Pool* pool;
    int64_t index;
    uint32_t generation;
  };

  static void* start(void* argument) {
    const Start start = *static_cast<Start*>(argument);
    delete static_cast<Start*>(argument);
    start.pool->work(start.index, start.generation);
    return nullptr;
  }

  void work(int64_t index, uint32_t seen) {
    for (;;) {
      seen = wait_for_new_job(seen);
      if (stopping_.load()) return;
      const int64_t first = begin_ + index * length_;
      if (first < end_) {
        inside_pool_job = true;
        try {
          (*job_)(first, std::min(end_, first + length_));
        } catch (...) {
          record_error(std::current_exception());
        }
        inside_pool_job = false;
      }
      remaining_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  uint32_t wait_for_new_job(uint32_t seen) {
    const auto spin_until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(spin_ns.load());
    for (int64_t i = 0;; ++i) {
      const uint32_t now = generation_.load(std::memory_order_acquire);
      if (now != seen) return now;
      _mm_pause();
      if ((i & 63) == 63 && std::chrono::steady_clock::now() >= spin_until) break;
    }
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    uint32_t now;
    while ((now = generation_.load(std::memory_order_seq_cst)) == seen) futex_wait(&generation_, seen);
    sleepers_.fetch_sub(1, std::memory_order_seq_cst);
    return now;
  }

  void wait_for_workers() {
    // The workers run their shares now: spin, but give the core away if one of them waits
    // for it (preempted by another process), rather than burn the time slice it needs.
    for (int64_t i = 0; remaining_.load(std::memory_order_acquire) > 0; ++i) {
      if (i < 4096) {
        _mm_pause();
      } else {
        sched_yield();
      }
    }
  }

  void record_error(std::exception_ptr error) {
    std::lock_guard<std::mutex> lock(error_mutex_);
    if (!error_) error_ = error;
  }

  std::vector<pthread_t> workers_;
  std::mutex job_mutex_, error_mutex_;
  std::atomic<uint32_t> generation_{0};
  std::atomic<int> remaining_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stopping_{false};
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t begin_ = 0, end_ = 0, length_ = 1;
  std::exception_ptr error_;
};

}  // namespace

void parallel_for(int64_t begin, int64_t end, int64_t grain, const std::function<void(int64_t, int64_t)>& f) {
  Pool& pool = Pool::instance();
  if (pool.own.load(std::memory_order_relaxed)) {
    pool.run(begin, end, grain, f);
  } else {
    at::parallel_for(begin, end, grain, f);
  }
}

void set_threads(bool own, int64_t spin_microseconds) {
  Pool& pool = Pool::instance();
  pool.spin_ns.store(own ? std::max<int64_t>(0, spin_microseconds) * 1000 : 0);
  pool.own.store(own);
}

bool own_threads() { return Pool::instance().own.load(); }

int64_t spin_microseconds() { return Pool::instance().spin_ns.load() / 1000; }

}  // namespace tokenworks
