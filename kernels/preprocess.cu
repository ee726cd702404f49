// Fused preprocessing: uint8 frame -> bilinear crop of a box -> normalised FP32/FP16 NCHW tensor.
//
// The maths is bpedge/_stages.py (clamp_box, scale_box, crop_resize, normalize) and the box rule of
// bpedge/_preprocessing.py (frame_box, expand_box, crop_box), transcribed; the tests in
// tests/kernels/ run this file under kernels/host_emulation.h against those functions.
//
// Entry points (one per output type):
//   bp_preprocess_f32(BpPreprocessArgs)   out is float  [batch, 1, out_h, out_w]
//   bp_preprocess_f16(BpPreprocessArgs)   out is __half [batch, 1, out_h, out_w]
// Launch: block (256, 1, 1) (any size up to 256 threads works); grid (G, batch, 1).
//   per_crop == 1: statistics are a block reduction, so only block x == 0 of each batch item works
//                  (G = 1; extra blocks return at once).
//   per_crop == 0: dataset mean/std; the G blocks of an item share its pixels (grid-stride loop).
// The box is read from device memory (the detector's output, in detector-input pixels) and becomes
// the crop box of _preprocessing.crop_box("detector", ..., frame_box(...)): scaled to frame pixels
// and clamped (frame_box), grown by crop_margin about its centre (expand_box) and clamped again
// (clamp_box), in that order, in double. That crop box is written to boxes_out for paste.cu (and
// the result). A non-finite box crops the whole frame (frame_box's rule; the margin cannot grow it
// past the frame) and writes NaN to boxes_out, which paste.cu turns into an empty mask.

#ifndef BP_HOST_EMULATION
#include <cuda_fp16.h>
#endif

#define BP_PREPROCESS_MAX_THREADS 256
// Largest out_w / out_h: the per-axis tap tables live in static shared memory.
#define BP_PREPROCESS_MAX_SIDE 1024

// Field order is the layout contract with kernels/_launch_args.py (ctypes mirror): 4 pointers,
// 7 doubles, 8 ints = 120 bytes, no padding.
struct BpPreprocessArgs {
  const unsigned char* frames;  // batch frames; frame n starts at frames + n * height * pitch
  const float* boxes;           // [x0, y0, x1, y1] per item, box_stride floats apart; NULL = whole frame
  float* boxes_out;             // clamped frame-pixel box per item (4 floats apart), or NULL
  void* out;                    // float or __half [batch, 1, out_h, out_w]
  double scale_x;               // box x (detector-input px) * scale_x = frame px
  double scale_y;
  double min_box_side;          // _stages.MIN_BOX_SIDE
  double crop_margin;           // PreprocessingSpec.crop_margin (>= 0; 0 crops the box as found)
  double mean;                  // dataset statistics, used when per_crop == 0
  double stddev;
  double eps;                   // floor of the std (both modes)
  int per_crop;                 // 1: mean/std of each resized crop (population std)
  int batch;
  int width;                    // frame size in pixels
  int height;
  int pitch;                    // bytes between frame rows (>= width)
  int box_stride;               // floats between consecutive input boxes (>= 4)
  int out_w;
  int out_h;
};

// One bilinear tap along an axis: the two source indices and the weight of the second.
struct BpTap {
  int i0;
  int i1;
  float w;
};

// _stages._clamp_interval.
__device__ __forceinline__ void bp_clamp_interval(double& lo, double& hi, double size, double min_side) {
  lo = fmin(fmax(lo, 0.0), size);
  hi = fmin(fmax(hi, 0.0), size);
  const double side = fmin(min_side, size);
  if (hi - lo < side) {
    const double centre = fmin(fmax((lo + hi) / 2.0, side / 2.0), size - side / 2.0);
    lo = centre - side / 2.0;
    hi = centre + side / 2.0;
  }
}

// _stages.clamp_box on a finite box: corners ordered, then each axis clamped.
__device__ __forceinline__ void bp_clamp_box(double box[4], const BpPreprocessArgs& a) {
  double lo_x = fmin(box[0], box[2]), hi_x = fmax(box[0], box[2]);
  double lo_y = fmin(box[1], box[3]), hi_y = fmax(box[1], box[3]);
  bp_clamp_interval(lo_x, hi_x, (double)a.width, a.min_box_side);
  bp_clamp_interval(lo_y, hi_y, (double)a.height, a.min_box_side);
  box[0] = lo_x;
  box[1] = lo_y;
  box[2] = hi_x;
  box[3] = hi_y;
}

// _preprocessing.expand_box: each side grown by margin times its size, half on either side.
// dx = (x1 - x0) * margin / 2.0 rounded as the reference rounds it: "/ 2.0" is "* 0.5" exactly (a
// power of two), and __dmul_rn is never contracted into a fused multiply-add (CUDA Math API,
// "Double Precision Intrinsics":
// https://docs.nvidia.com/cuda/cuda-math-api/cuda_math_api/group__CUDA__MATH__INTRINSIC__DOUBLE.html),
// which NVRTC's default --fmad=true would otherwise be free to do with the subtraction that
// follows. Margin 0 leaves the box as is (no arithmetic), as the reference does.
__device__ __forceinline__ void bp_expand_box(double box[4], double margin) {
  if (margin == 0.0) return;
  const double dx = __dmul_rn(__dmul_rn(box[2] - box[0], margin), 0.5);
  const double dy = __dmul_rn(__dmul_rn(box[3] - box[1], margin), 0.5);
  box[0] = box[0] - dx;
  box[1] = box[1] - dy;
  box[2] = box[2] + dx;
  box[3] = box[3] + dy;
}

// The frame-pixel crop box of item n: _preprocessing.crop_box("detector", (H, W), crop_margin,
// detected=frame_box(raw box)), i.e. scale_box, clamp_box, expand_box, clamp_box. Returns false
// for a non-finite box (frame_box's rule), leaving the whole frame in box[]; with no boxes (the
// detector input) box[] is the whole frame, untouched.
__device__ __forceinline__ bool bp_crop_box(const BpPreprocessArgs& a, int n, double box[4]) {
  box[0] = 0.0;
  box[1] = 0.0;
  box[2] = (double)a.width;
  box[3] = (double)a.height;
  if (a.boxes == 0) return true;
  const float* b = a.boxes + (long long)n * a.box_stride;
  const double x0 = (double)b[0] * a.scale_x, y0 = (double)b[1] * a.scale_y;
  const double x1 = (double)b[2] * a.scale_x, y1 = (double)b[3] * a.scale_y;
  if (!(isfinite(x0) && isfinite(y0) && isfinite(x1) && isfinite(y1))) return false;
  box[0] = x0;
  box[1] = y0;
  box[2] = x1;
  box[3] = y1;
  bp_clamp_box(box, a);  // frame_box
  bp_expand_box(box, a.crop_margin);
  bp_clamp_box(box, a);  // crop_box clamps again, margin 0 included
  return true;
}

// _stages._source_index for output index u, in double: the source coordinate reaches ~1e4 and a
// float would put its error (~1e-3 px) straight into the sampled value.
__device__ __forceinline__ BpTap bp_source_tap(double start, double length, int n_out, int n_src, int u) {
  double s = start + (u + 0.5) * (length / n_out) - 0.5;
  const int lo = min(max((int)floor(start), 0), n_src - 1);
  const int hi = min(max((int)ceil(start + length) - 1, lo), n_src - 1);
  s = fmin(fmax(s, (double)lo), (double)hi);
  const double i0 = floor(s);
  BpTap tap;
  tap.i0 = (int)i0;
  tap.i1 = min(tap.i0 + 1, hi);
  tap.w = (float)(s - i0);
  return tap;
}

// Bilinear sample of output pixel p. The a + w * (b - a) form returns a flat region's value
// exactly, as the float64 reference does, so a flat crop has zero variance here too.
__device__ __forceinline__ float bp_sample(const unsigned char* frame, int pitch, const BpTap& tx,
                                           const BpTap& ty) {
  const unsigned char* row0 = frame + (long long)ty.i0 * pitch;
  const unsigned char* row1 = frame + (long long)ty.i1 * pitch;
  const float a = row0[tx.i0], b = row0[tx.i1], c = row1[tx.i0], d = row1[tx.i1];
  const float top = a + tx.w * (b - a);
  const float bottom = c + tx.w * (d - c);
  return top + ty.w * (bottom - top);
}

__device__ __forceinline__ void bp_store(float* out, float v) { *out = v; }
__device__ __forceinline__ void bp_store(__half* out, float v) { *out = __float2half_rn(v); }

template <typename OutT>
__device__ __forceinline__ void bp_preprocess(const BpPreprocessArgs& a) {
  __shared__ BpTap taps_x[BP_PREPROCESS_MAX_SIDE];
  __shared__ BpTap taps_y[BP_PREPROCESS_MAX_SIDE];
  __shared__ double partial_sum[BP_PREPROCESS_MAX_THREADS];
  __shared__ double partial_sq[BP_PREPROCESS_MAX_THREADS];

  const int n = blockIdx.y;
  // Whole-block exits only (uniform conditions), so no thread skips a __syncthreads below.
  if (n >= a.batch || (a.per_crop && blockIdx.x != 0)) return;
  if (a.out_w < 1 || a.out_h < 1 || a.out_w > BP_PREPROCESS_MAX_SIDE || a.out_h > BP_PREPROCESS_MAX_SIDE) return;
  const int n_threads = blockDim.x * blockDim.y * blockDim.z;
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);

  double box[4];
  const bool finite_box = bp_crop_box(a, n, box);
  if (t == 0 && blockIdx.x == 0 && a.boxes_out != 0) {
    float* out_box = a.boxes_out + 4LL * n;
    for (int k = 0; k < 4; ++k) out_box[k] = finite_box ? (float)box[k] : nanf("");
  }
  for (int i = t; i < a.out_w; i += n_threads) taps_x[i] = bp_source_tap(box[0], box[2] - box[0], a.out_w, a.width, i);
  for (int i = t; i < a.out_h; i += n_threads) taps_y[i] = bp_source_tap(box[1], box[3] - box[1], a.out_h, a.height, i);
  __syncthreads();

  const unsigned char* frame = a.frames + (long long)n * a.height * a.pitch;
  OutT* out = (OutT*)a.out + (long long)n * a.out_w * a.out_h;
  const int n_pixels = a.out_w * a.out_h;
  float mean = (float)a.mean;
  float stddev = (float)fmax(a.stddev, a.eps);

  if (a.per_crop) {
    // Sums of (v - shift) in double: the shift (pixel 0) keeps E[d^2] - E[d]^2 well conditioned.
    const float shift = bp_sample(frame, a.pitch, taps_x[0], taps_y[0]);
    double sum = 0.0, sum_sq = 0.0;
    for (int p = t; p < n_pixels; p += n_threads) {
      const double d = (double)bp_sample(frame, a.pitch, taps_x[p % a.out_w], taps_y[p / a.out_w]) - shift;
      sum += d;
      sum_sq += d * d;
    }
    partial_sum[t] = sum;
    partial_sq[t] = sum_sq;
    __syncthreads();
    int width = 1;
    while (width < n_threads) width <<= 1;
    for (int half = width >> 1; half > 0; half >>= 1) {
      if (t < half && t + half < n_threads) {
        partial_sum[t] += partial_sum[t + half];
        partial_sq[t] += partial_sq[t + half];
      }
      __syncthreads();
    }
    const double mean_d = partial_sum[0] / n_pixels;
    const double var = fmax(partial_sq[0] / n_pixels - mean_d * mean_d, 0.0);
    mean = (float)(shift + mean_d);
    stddev = (float)fmax(sqrt(var), a.eps);
  }

  const int n_blocks = a.per_crop ? 1 : (int)gridDim.x;
  for (int p = blockIdx.x * n_threads + t; p < n_pixels; p += n_blocks * n_threads) {
    const float v = bp_sample(frame, a.pitch, taps_x[p % a.out_w], taps_y[p / a.out_w]);
    bp_store(out + p, (v - mean) / stddev);
  }
}

extern "C" __global__ void __launch_bounds__(BP_PREPROCESS_MAX_THREADS)
bp_preprocess_f32(const BpPreprocessArgs args) {
  bp_preprocess<float>(args);
}

extern "C" __global__ void __launch_bounds__(BP_PREPROCESS_MAX_THREADS)
bp_preprocess_f16(const BpPreprocessArgs args) {
  bp_preprocess<__half>(args);
}
