// The host-emulation build: the SAME preprocess.cu and paste.cu, compiled by g++ against
// host_emulation.h, behind extern "C" launchers that kernels/_host_build.py loads with ctypes.
// Built and cached by kernels/_host_build.py; never part of the GPU build.

#include <cstddef>
#include <cstdint>

#include "host_emulation.h"
#include "preprocess.cu"
#include "paste.cu"

namespace {

dim3 to_dim3(const unsigned int v[3]) { return dim3{v[0], v[1], v[2]}; }

// A probe of the emulation itself: each thread publishes a value in shared memory, waits at the
// barrier, then reads its neighbour's. Without a real barrier (or with shared memory leaking
// between blocks) the neighbour's value is stale.
__global__ void bp_probe_exchange(int* out) {
  __shared__ int slots[bp_emulation::kMaxThreadsPerBlock];
  const int n = blockDim.x;
  const int t = threadIdx.x;
  const int block = blockIdx.x;
  slots[t] = 1000 * block + t;
  __syncthreads();
  const int neighbour = slots[(t + 1) % n];
  __syncthreads();  // nobody overwrites a slot before its reader has read it
  slots[t] = neighbour;
  __syncthreads();
  out[block * n + t] = slots[(t + n - 1) % n];
}

}  // namespace

extern "C" {

// Launch bp_preprocess_f32 (fp16 == 0) or bp_preprocess_f16 on grid[3] x block[3]. 0 on success.
int bp_host_preprocess(const BpPreprocessArgs* args, int fp16, const unsigned int grid[3],
                       const unsigned int block[3]) {
  const BpPreprocessArgs a = *args;
  return bp_emulation::launch(to_dim3(grid), to_dim3(block), [&a, fp16] {
    if (fp16) bp_preprocess_f16(a); else bp_preprocess_f32(a);
  });
}

// Launch bp_paste_f32 (fp16 == 0) or bp_paste_f16 on grid[3] x block[3]. 0 on success.
int bp_host_paste(const BpPasteArgs* args, int fp16, const unsigned int grid[3], const unsigned int block[3]) {
  const BpPasteArgs a = *args;
  return bp_emulation::launch(to_dim3(grid), to_dim3(block), [&a, fp16] {
    if (fp16) bp_paste_f16(a); else bp_paste_f32(a);
  });
}

// `blocks` blocks of `threads` threads; out holds blocks * threads ints.
int bp_host_probe_exchange(int* out, unsigned int blocks, unsigned int threads) {
  return bp_emulation::launch(dim3{blocks, 1, 1}, dim3{threads, 1, 1}, [out] { bp_probe_exchange(out); });
}

void bp_host_float2half(const float* in, std::uint16_t* out, long long n) {
  for (long long i = 0; i < n; ++i) out[i] = __float2half_rn(in[i]).bits;
}

void bp_host_half2float(const std::uint16_t* in, float* out, long long n) {
  for (long long i = 0; i < n; ++i) out[i] = __half2float(__half{in[i]});
}

// sizeof then the offset of each field, in declaration order: checked against the ctypes mirrors.
int bp_host_preprocess_layout(long long* out) {
  const long long v[] = {
      sizeof(BpPreprocessArgs),
      offsetof(BpPreprocessArgs, frames), offsetof(BpPreprocessArgs, boxes),
      offsetof(BpPreprocessArgs, boxes_out), offsetof(BpPreprocessArgs, out),
      offsetof(BpPreprocessArgs, scale_x), offsetof(BpPreprocessArgs, scale_y),
      offsetof(BpPreprocessArgs, min_box_side), offsetof(BpPreprocessArgs, crop_margin),
      offsetof(BpPreprocessArgs, mean),
      offsetof(BpPreprocessArgs, stddev), offsetof(BpPreprocessArgs, eps),
      offsetof(BpPreprocessArgs, per_crop), offsetof(BpPreprocessArgs, batch),
      offsetof(BpPreprocessArgs, width), offsetof(BpPreprocessArgs, height),
      offsetof(BpPreprocessArgs, pitch), offsetof(BpPreprocessArgs, box_stride),
      offsetof(BpPreprocessArgs, out_w), offsetof(BpPreprocessArgs, out_h)};
  for (std::size_t i = 0; i < sizeof v / sizeof v[0]; ++i) out[i] = v[i];
  return static_cast<int>(sizeof v / sizeof v[0]);
}

int bp_host_paste_layout(long long* out) {
  const long long v[] = {
      sizeof(BpPasteArgs),
      offsetof(BpPasteArgs, prob), offsetof(BpPasteArgs, boxes),
      offsetof(BpPasteArgs, scores), offsetof(BpPasteArgs, masks),
      offsetof(BpPasteArgs, threshold), offsetof(BpPasteArgs, score_threshold),
      offsetof(BpPasteArgs, batch), offsetof(BpPasteArgs, width),
      offsetof(BpPasteArgs, height), offsetof(BpPasteArgs, pitch),
      offsetof(BpPasteArgs, crop_w), offsetof(BpPasteArgs, crop_h),
      offsetof(BpPasteArgs, box_stride), offsetof(BpPasteArgs, score_stride)};
  for (std::size_t i = 0; i < sizeof v / sizeof v[0]; ++i) out[i] = v[i];
  return static_cast<int>(sizeof v / sizeof v[0]);
}

}  // extern "C"
