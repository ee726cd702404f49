// Paste-back: crop-sized probability map -> thresholded uint8 0/255 mask of the whole frame.
//
// The maths is bpedge/_stages.py (paste_probability, paste_back), transcribed; the tests in
// tests/kernels/ run this file under kernels/host_emulation.h against those functions.
//
// Entry points (one per probability type):
//   bp_paste_f32(BpPasteArgs)   prob is float  [batch, crop_h, crop_w]
//   bp_paste_f16(BpPasteArgs)   prob is __half [batch, crop_h, crop_w]
// Launch: block (32, 8, 1) (any 2-D block of up to 256 threads works);
//         grid (ceil(width / 32), ceil(height / 8), batch).
// Every mask pixel is written (0 or 255), so the mask buffer needs no memset. The mask is all 0 when
// the item's score is below score_threshold or NaN, or its box is not finite or has no area (as
// preprocess.cu writes a NaN box for a non-finite detector box).

#ifndef BP_HOST_EMULATION
#include <cuda_fp16.h>
#endif

#define BP_PASTE_MAX_THREADS 256

// Field order is the layout contract with kernels/_launch_args.py (ctypes mirror): 4 pointers,
// 2 doubles, 8 ints = 80 bytes, no padding.
struct BpPasteArgs {
  const void* prob;         // float or __half [batch, crop_h, crop_w]
  const float* boxes;       // frame-pixel [x0, y0, x1, y1] per item, box_stride floats apart
  const float* scores;      // detector score per item, score_stride floats apart
  unsigned char* masks;     // uint8 [batch, height, pitch]; item n starts at masks + n * height * pitch
  double threshold;         // pasted probability >= threshold -> 255
  double score_threshold;   // score >= score_threshold: the BP is present
  int batch;
  int width;                // frame size in pixels
  int height;
  int pitch;                // bytes between mask rows (>= width)
  int crop_w;
  int crop_h;
  int box_stride;
  int score_stride;
};

// One frame pixel's tap into the crop along an axis; i0 < 0 when its centre is outside the box.
struct BpPasteTap {
  int i0;
  int i1;
  float w;
};

// _stages._covered_pixels and _stages._paste_taps for frame pixel `pix`, in double (see
// preprocess.cu: a float coordinate would move the threshold crossing by ~1e-5 px).
__device__ __forceinline__ BpPasteTap bp_paste_tap(int pix, double lo, double hi, int size, int n_crop) {
  BpPasteTap tap;
  tap.i0 = -1;
  tap.i1 = -1;
  tap.w = 0.0f;
  const double first = fmax(ceil(lo - 0.5), 0.0);
  const double last = fmin(ceil(hi - 0.5), (double)size);  // exclusive
  if (!(pix >= first && pix < last)) return tap;
  double s = (pix + 0.5 - lo) * (n_crop / (hi - lo)) - 0.5;
  s = fmin(fmax(s, 0.0), n_crop - 1.0);
  const double i0 = floor(s);
  tap.i0 = (int)i0;
  tap.i1 = min(tap.i0 + 1, n_crop - 1);
  tap.w = (float)(s - i0);
  return tap;
}

// A non-finite probability (a diverged model) counts as 0 before interpolating, as
// _stages.paste_probability defines: left in, the lerp below gives NaN (never >= threshold) for any
// NaN tap and for an inf tap even at weight 0 (0 * inf), unlike the reference and OpenCV.
__device__ __forceinline__ float bp_finite_or_0(float v) { return isfinite(v) ? v : 0.0f; }
__device__ __forceinline__ float bp_load(const float* p) { return bp_finite_or_0(*p); }
__device__ __forceinline__ float bp_load(const __half* p) { return bp_finite_or_0(__half2float(*p)); }

template <typename ProbT>
__device__ __forceinline__ void bp_paste(const BpPasteArgs& a) {
  __shared__ BpPasteTap taps_x[BP_PASTE_MAX_THREADS];
  __shared__ BpPasteTap taps_y[BP_PASTE_MAX_THREADS];

  const int n = blockIdx.z;
  if (n >= a.batch) return;  // uniform over the block
  const int n_threads = blockDim.x * blockDim.y * blockDim.z;
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int block_x = blockIdx.x * blockDim.x, block_y = blockIdx.y * blockDim.y;

  // Every thread reads the same box and score, so `present` is uniform over the block.
  const float* b = a.boxes + (long long)n * a.box_stride;
  const double x0 = b[0], y0 = b[1], x1 = b[2], y1 = b[3];
  const double score = a.scores[(long long)n * a.score_stride];
  const bool present = score >= a.score_threshold && isfinite(x0) && isfinite(y0) && isfinite(x1) &&
                       isfinite(y1) && x1 > x0 && y1 > y0;
  if (present) {
    for (int i = t; i < (int)blockDim.x; i += n_threads) taps_x[i] = bp_paste_tap(block_x + i, x0, x1, a.width, a.crop_w);
    for (int i = t; i < (int)blockDim.y; i += n_threads) taps_y[i] = bp_paste_tap(block_y + i, y0, y1, a.height, a.crop_h);
  }
  __syncthreads();

  const int x = block_x + threadIdx.x, y = block_y + threadIdx.y;
  if (threadIdx.z != 0 || x >= a.width || y >= a.height) return;
  unsigned char value = 0;
  if (present) {
    const BpPasteTap tx = taps_x[threadIdx.x], ty = taps_y[threadIdx.y];
    if (tx.i0 >= 0 && ty.i0 >= 0) {
      const ProbT* prob = (const ProbT*)a.prob + (long long)n * a.crop_w * a.crop_h;
      const ProbT* row0 = prob + (long long)ty.i0 * a.crop_w;
      const ProbT* row1 = prob + (long long)ty.i1 * a.crop_w;
      const float p00 = bp_load(row0 + tx.i0), p01 = bp_load(row0 + tx.i1);
      const float p10 = bp_load(row1 + tx.i0), p11 = bp_load(row1 + tx.i1);
      const float top = p00 + tx.w * (p01 - p00);
      const float bottom = p10 + tx.w * (p11 - p10);
      const float p = top + ty.w * (bottom - top);
      value = (double)p >= a.threshold ? 255 : 0;
    }
  }
  a.masks[(long long)n * a.height * a.pitch + (long long)y * a.pitch + x] = value;
}

extern "C" __global__ void __launch_bounds__(BP_PASTE_MAX_THREADS)
bp_paste_f32(const BpPasteArgs args) {
  bp_paste<float>(args);
}

extern "C" __global__ void __launch_bounds__(BP_PASTE_MAX_THREADS)
bp_paste_f16(const BpPasteArgs args) {
  bp_paste<__half>(args);
}
