// Host emulation of the small CUDA subset that kernels/preprocess.cu and kernels/paste.cu use, so
// that g++ compiles the SAME .cu source and the kernels' logic can be tested on a CPU.
//
// What is emulated:
//   - __global__ / __device__ / __forceinline__ / __launch_bounds__ are dropped;
//   - threadIdx / blockIdx are thread_local, blockDim / gridDim are per launch;
//   - a block runs as blockDim.x*y*z REAL std::threads, and __syncthreads() is a std::barrier,
//     so a missing barrier or a divergent one shows up as wrong results or a hang;
//   - a thread that returns from the kernel leaves the barrier (arrive_and_drop), as an exited
//     thread does on the GPU;
//   - blocks of a grid run one after another on the same pool of threads, so __shared__ (mapped to
//     function-local statics) is per block instance; launches are serialised by a mutex;
//   - __half with round-to-nearest-even __float2half_rn and exact __half2float;
//   - the __dmul_rn double intrinsic (the plain operator under -ffp-contract=off).
// What it does NOT show: memory coalescing, bank conflicts, timing, races between blocks, or a race
// inside a block that the OS scheduler happens never to interleave (real threads make such races
// possible here, not certain).
#pragma once

#ifndef BP_HOST_EMULATION
#define BP_HOST_EMULATION 1
#endif

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One instance per kernel function; correct because blocks of one launch run one at a time.
#define __shared__ static

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline dim3 blockDim;
inline dim3 gridDim;

using std::ceil;
using std::floor;
using std::fmax;
using std::fmin;
using std::isfinite;
using std::nanf;
using std::sqrt;

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline float fmaxf(float a, float b) { return std::fmax(a, b); }
inline float fminf(float a, float b) { return std::fmin(a, b); }
// The round-to-nearest double multiply intrinsic: g++ builds with -ffp-contract=off and the
// default rounding mode, so the plain operator rounds the same way.
inline double __dmul_rn(double a, double b) { return a * b; }

// ---- __half ----------------------------------------------------------------------------------

struct __half {
  std::uint16_t bits;
};

inline std::uint32_t bp_float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bp_bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round-to-nearest-even float -> half (F. Giesen's float_to_half_fast3_rtne): overflow gives inf,
// NaN stays NaN (quiet), subnormals are rounded by an FPU addition in the default RNE mode.
inline __half __float2half_rn(float value) {
  const std::uint32_t f32_infinity = 255u << 23;
  const std::uint32_t f16_overflow = (127u + 16u) << 23;  // 65536.0f
  const std::uint32_t denorm_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  std::uint32_t f = bp_float_bits(value);
  const std::uint32_t sign = f & 0x80000000u;
  f ^= sign;
  std::uint32_t out;
  if (f >= f16_overflow) {
    out = f > f32_infinity ? 0x7e00u : 0x7c00u;
  } else if (f < (113u << 23)) {  // below 2^-14: the result is subnormal or zero
    out = bp_float_bits(bp_bits_float(f) + bp_bits_float(denorm_magic)) - denorm_magic;
  } else {
    const std::uint32_t mantissa_odd = (f >> 13) & 1u;
    f += (static_cast<std::uint32_t>(15 - 127) << 23) + 0xfffu;
    f += mantissa_odd;
    out = f >> 13;
  }
  return __half{static_cast<std::uint16_t>(out | (sign >> 16))};
}

inline float __half2float(__half h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h.bits & 0x8000u) << 16;
  const std::uint32_t exponent = (h.bits >> 10) & 0x1fu;
  const std::uint32_t mantissa = h.bits & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return bp_bits_float(sign | 0x7f800000u | (mantissa << 13));
  return bp_bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// ---- launch ----------------------------------------------------------------------------------

namespace bp_emulation {

inline std::barrier<>* block_barrier = nullptr;  // the running block's __syncthreads barrier
inline std::mutex launch_mutex;

//: The most threads per block the emulated launcher accepts (the kernels' __launch_bounds__).
constexpr unsigned int kMaxThreadsPerBlock = 256;

// Run `kernel()` over `grid` x `block` threads. Returns 0, or 1 when the block is empty or larger
// than kMaxThreadsPerBlock (a launch the GPU would refuse), or the grid is empty.
inline int launch(dim3 grid, dim3 block, const std::function<void()>& kernel) {
  const unsigned int n_threads = block.x * block.y * block.z;
  if (n_threads == 0 || n_threads > kMaxThreadsPerBlock) return 1;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return 1;
  std::lock_guard<std::mutex> serialise(launch_mutex);
  gridDim = grid;
  blockDim = block;
  std::unique_ptr<std::barrier<>> sync = std::make_unique<std::barrier<>>(n_threads);
  block_barrier = sync.get();
  // Completion runs once every thread has finished the block, before any starts the next one:
  // a fresh __syncthreads barrier replaces the one that exiting threads dropped out of.
  auto next_block = [&]() noexcept {
    sync = std::make_unique<std::barrier<>>(n_threads);
    block_barrier = sync.get();
  };
  std::barrier block_done(static_cast<std::ptrdiff_t>(n_threads), next_block);
  auto worker = [&](uint3 tid) {
    threadIdx = tid;
    for (unsigned int bz = 0; bz < grid.z; ++bz)
      for (unsigned int by = 0; by < grid.y; ++by)
        for (unsigned int bx = 0; bx < grid.x; ++bx) {
          blockIdx = uint3{bx, by, bz};
          kernel();
          block_barrier->arrive_and_drop();
          block_done.arrive_and_wait();
        }
  };
  std::vector<std::thread> threads;
  threads.reserve(n_threads);
  for (unsigned int z = 0; z < block.z; ++z)
    for (unsigned int y = 0; y < block.y; ++y)
      for (unsigned int x = 0; x < block.x; ++x) threads.emplace_back(worker, uint3{x, y, z});
  for (std::thread& t : threads) t.join();
  block_barrier = nullptr;
  return 0;
}

}  // namespace bp_emulation

inline void __syncthreads() { bp_emulation::block_barrier->arrive_and_wait(); }
