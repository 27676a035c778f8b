// Plans: everything needed to run one oneDNN convolution, built once per
// (op, types, bias, epilogue, layout policies, thread count, geometry) and
// cached.
//
// A plan holds the oneDNN primitive and, for each of its three operands
// (activations x and y, weights w), the layout the caller's buffer has
// ("user") and the one the primitive uses ("prim"); when they differ the plan
// has a reorder primitive between them and the call passes a scratch copy in
// the primitive's layout.  Caller layouts: activations NHWC or NCHW (row
// major), weights HWIO / hwigo for NHWC callers and OIHW / goihw for NCHW
// ones (grouped: output channel g * C_out/groups + o).  README.md has the
// measurements behind the layout policies.

#ifndef JCONV_ONEDNN_PLAN_H_
#define JCONV_ONEDNN_PLAN_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "int8_source.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace jconv_onednn {

using dnnl::memory;
using Tag = memory::format_tag;
using Dt = memory::data_type;

const dnnl::engine& Engine();
bool Bf16Supported();
bool Int8Supported();

// Weight layout: kAny lets oneDNN choose (format_tag::any) and reorders the
// caller's weights to it on every call; kPlain hands oneDNN the caller's.
enum class WeightsPolicy : int { kAny = 0, kPlain = 1 };
// Activation layout: kPlain hands oneDNN the caller's NHWC / NCHW buffers;
// kAny lets oneDNN choose and reorders; kAuto decides per convolution
// (ActivationsAny in plan.cc, measured).
enum class ActsPolicy : int { kAuto = 0, kPlain = 1, kAny = 2 };

extern std::atomic<int> g_weights_policy;
extern std::atomic<int> g_acts_policy;
extern std::atomic<int> g_num_threads;
extern const int g_default_threads;

// Applies set_num_threads() on the calling thread; returns the thread count.
int ApplyThreadSetting();

enum class Op : int64_t { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };

// The oneDNN data types of one convolution: activations (x / dx), weights
// (w / dw), output (y / dy).  Float convolutions use one type for all three;
// int8 forward ones are {s8 or u8, s8, s32}.
struct Types {
  Dt src = Dt::f32, wei = Dt::f32, dst = Dt::f32;
  static Types Same(Dt dt) { return {dt, dt, dt}; }
  bool is_int8() const { return wei == Dt::s8; }
};

struct Geometry {
  int64_t n = 0, h = 0, w = 0, ci = 0;  // input
  int64_t kh = 0, kw = 0, co = 0;       // kernel
  int64_t ho = 0, wo = 0;               // output spatial size
  int64_t groups = 1;
  int64_t sh = 1, sw = 1;               // strides
  int64_t dh = 1, dw = 1;               // dilation, JAX convention (>= 1)
  int64_t pt = 0, pb = 0, pl = 0, pr = 0;
  bool nchw = false;                    // NCHW / OIHW buffers (else NHWC / HWIO)
};

// Output size of a convolution along one axis, as XLA defines it: zero when
// the dilated kernel is larger than the padded input.
int64_t OutSize(int64_t in, int64_t k, int64_t s, int64_t d, int64_t p0,
                int64_t p1);

// A reorder between the caller's layout and the primitive's.
struct Reorder {
  bool on = false;
  dnnl::primitive prim;
  memory::desc scratch_md;
  size_t off_scratch = 0;
};

// One operand of the primitive: read (input) or written (output) by it.
struct Operand {
  memory::desc user;  // the caller's buffer
  memory::desc prim;  // what the primitive uses
  bool input = true;
  Reorder reorder;    // user -> prim for inputs, prim -> user for outputs
  size_t off = 0;     // the scratch copy in the primitive's layout
};

struct Plan {
  dnnl::primitive conv;
  Operand x, w, y;  // src / diff_src, weights / diff_weights, dst / diff_dst
  memory::desc b_md;
  memory::desc conv_scratch_md;
  std::string impl;  // oneDNN implementation name
  // int8 sources with k > 514 reach oneDNN as uint8 x + 128; `fix`
  // subtracts the difference in int32 afterwards (int8_source.h).  oneDNN
  // then runs `batch` images at a time, `chunks` times (else batch = N).
  bool shift_src = false;
  SignedSourceFix fix;
  int64_t cig = 0, batch = 0, chunks = 1;
  size_t off_x = 0, off_fix = 0;  // shifted source, compensation
  size_t total_scratch = 0;
};

// `relu`: the forward convolution applies max(0, .) to its output (bias
// included) as a oneDNN post-op, in the same pass.
std::shared_ptr<const Plan> GetPlan(Op op, Types t, bool bias,
                                    const Geometry& g, bool relu = false);

// The plan cache: [entries, capacity, hits, misses]; capacity 0 disables it.
void CacheStats(int64_t* out);
void SetCacheCapacity(size_t capacity);
void ClearCache();

}  // namespace jconv_onednn

#endif  // JCONV_ONEDNN_PLAN_H_
