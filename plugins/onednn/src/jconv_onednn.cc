// jconv_onednn: oneDNN CPU convolutions exposed as XLA typed-FFI handlers.
//
// Layouts (all row-major, channels-last):
//   x  : (N, H, W, C_in)                 NHWC
//   w  : (KH, KW, C_in / groups, C_out)  HWIO; for groups > 1 the output
//        channel index is g * (C_out / groups) + o, i.e. memory order
//        h, w, i, g, o, which is oneDNN's `hwigo` for grouped weights.
//   y  : (N, Ho, Wo, C_out)              NHWC
//   b  : (C_out,)
//
// Handlers (names as registered from Python):
//   jconv_onednn_conv_fwd            (x, w)        -> y   (float or int8)
//   jconv_onednn_conv_fwd_bias       (x, w, b)     -> y
//   jconv_onednn_conv_bwd_data       (dy, w)       -> dx
//   jconv_onednn_conv_bwd_weights    (x, dy)       -> dw
//   jconv_onednn_conv_bwd_weights_bias (x, dy)     -> (dw, db)
// Attributes (all handlers):
//   stride   = [sh, sw]                  (>= 1)
//   padding  = [top, bottom, left, right] (>= 0)
//   dilation = [dh, dw]                  (>= 1, JAX convention; oneDNN gets d-1)
//   groups   = int                       (>= 1)
//
// Float convolutions: every tensor has the same dtype, float32 or bfloat16;
// oneDNN accumulates in float32 and writes the output in the input dtype.
// Integer convolutions (forward only, no bias): x int8 or uint8, w int8,
// y int32, the exact int32 sum of the products (what lax computes with
// preferred_element_type=int32).  They run only on CPUs with VNNI or AMX,
// where oneDNN's int8 kernels multiply-accumulate exactly (see Int8Supported).
//
// Primitive cache: for each (op, dtype, bias, weight-layout policy, OpenMP
// thread count, geometry) we build the oneDNN
// primitive descriptor, the primitive and (when the kernel wants a blocked
// weight layout) a reorder primitive once, and keep them in a bounded,
// mutex-protected LRU map.  oneDNN's own primitive cache only memoizes
// primitive *creation* from an already-built descriptor; building the
// descriptor itself (implementation dispatch) is not cached by oneDNN and is
// the dominant cost for small convolutions, hence this cache.
//
// Scratchpad: oneDNN's default "library" scratchpad is shared by all
// primitives and requires a primitive to always run on the thread that
// created it.  XLA calls handlers from arbitrary pool threads, so every
// primitive here is created with scratchpad_mode::user and receives scratch
// memory per call: from XLA's FFI ScratchAllocator when it can provide it
// (XLA:CPU in jaxlib 0.10.2 cannot), else from a per-thread buffer.  That
// makes concurrent execution of one cached primitive from several threads
// safe.

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <list>
#include <memory>
#include <stdexcept>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <omp.h>

#include "int8_source.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using Dt = memory::data_type;

constexpr char kPrefix[] = "jconv_onednn: ";

// ---------------------------------------------------------------------------
// Global oneDNN state.
// ---------------------------------------------------------------------------

const dnnl::engine& Engine() {
  static const dnnl::engine* engine =
      new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

// A CPU stream is cheap but not free to create; one per calling thread.
dnnl::stream& ThreadStream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

bool Bf16Supported() {
  // Native bf16 arithmetic: AVX512_BF16 (Cooper Lake and later), AMX, or
  // AVX2-VNNI-2.  oneDNN can also emulate bf16 on plain AVX-512 and has a
  // reference path elsewhere, but both are slow enough to be a trap, so we
  // report bf16 as unsupported there and refuse bf16 calls.
  static const bool supported = [] {
    switch (dnnl::get_effective_cpu_isa()) {
      case dnnl::cpu_isa::avx2_vnni_2:
      case dnnl::cpu_isa::avx512_core_bf16:
      case dnnl::cpu_isa::avx512_core_fp16:
      case dnnl::cpu_isa::avx512_core_amx:
      case dnnl::cpu_isa::avx512_core_amx_fp16:
        return true;
      default:
        return false;
    }
  }();
  return supported;
}

// Exact int8 convolutions: VNNI (vpdpbusd) or AMX.  Without them oneDNN's
// x86 int8 kernels use vpmaddubsw, whose int16 pair sums saturate, and for
// int8 sources they halve the weights to avoid that (a rounding); neither is
// what lax computes, so int8 calls are refused there.
bool Int8Supported() {
  static const bool supported = [] {
    switch (dnnl::get_effective_cpu_isa()) {
      case dnnl::cpu_isa::avx2_vnni:
      case dnnl::cpu_isa::avx2_vnni_2:
      case dnnl::cpu_isa::avx512_core_vnni:
      case dnnl::cpu_isa::avx512_core_bf16:
      case dnnl::cpu_isa::avx512_core_fp16:
      case dnnl::cpu_isa::avx512_core_amx:
      case dnnl::cpu_isa::avx512_core_amx_fp16:
        return true;
      default:
        return false;
    }
  }();
  return supported;
}

// Weight-layout policy (see README.md for the measurements behind it).
//   kAny   : let oneDNN choose the weight layout (format_tag::any) and
//            reorder HWIO <-> that layout on every call when they differ.
//   kPlain : hand oneDNN the HWIO/hwigo weights as they are.
enum class WeightsPolicy : int { kAny = 0, kPlain = 1 };

std::atomic<int> g_weights_policy{static_cast<int>(WeightsPolicy::kAny)};

// OpenMP threads per convolution.  oneDNN (GNU OpenMP build) runs each
// primitive with omp_get_max_threads() of the calling thread, which is a
// per-thread setting: OMP_NUM_THREADS, else the number of CPUs.  XLA calls us
// from its own pool threads, so set_num_threads() is applied lazily on each
// calling thread, right before a plan is looked up (primitives are built for
// a thread count, so it is part of the cache key).  0 = the process default
// read when the library was loaded.
const int g_default_threads = omp_get_max_threads();
std::atomic<int> g_num_threads{0};

int ApplyThreadSetting() {
  const int wanted = g_num_threads.load(std::memory_order_relaxed);
  const int target = wanted > 0 ? wanted : g_default_threads;
  if (omp_get_max_threads() != target) omp_set_num_threads(target);
  return target;
}

// ---------------------------------------------------------------------------
// Geometry and cache key.
// ---------------------------------------------------------------------------

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
  int64_t n = 0, h = 0, w = 0, ci = 0;  // input, NHWC
  int64_t kh = 0, kw = 0, co = 0;       // kernel (KH, KW, ci/groups, co)
  int64_t ho = 0, wo = 0;               // output spatial size
  int64_t groups = 1;
  int64_t sh = 1, sw = 1;               // strides
  int64_t dh = 1, dw = 1;               // dilation, JAX convention (>= 1)
  int64_t pt = 0, pb = 0, pl = 0, pr = 0;
};

// Output size of a convolution along one axis, as XLA defines it: zero when
// the dilated kernel is larger than the padded input.
int64_t OutSize(int64_t in, int64_t k, int64_t s, int64_t d, int64_t p0,
                int64_t p1) {
  const int64_t span = (k - 1) * d + 1;
  const int64_t padded = in + p0 + p1;
  if (padded < span) return 0;
  return (padded - span) / s + 1;
}

struct Key {
  std::array<int64_t, 25> v;
  bool operator==(const Key& o) const { return v == o.v; }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    // FNV-1a over the 64-bit words.
    uint64_t h = 1469598103934665603ull;
    for (int64_t x : k.v) {
      h ^= static_cast<uint64_t>(x);
      h *= 1099511628211ull;
    }
    return static_cast<size_t>(h);
  }
};

Key MakeKey(Op op, Types t, bool bias, WeightsPolicy policy, int threads,
            const Geometry& g) {
  return Key{{static_cast<int64_t>(op), static_cast<int64_t>(t.src),
              static_cast<int64_t>(t.wei), static_cast<int64_t>(t.dst),
              bias ? 1 : 0, static_cast<int64_t>(policy), threads, g.n, g.h, g.w,
              g.ci, g.kh, g.kw, g.co, g.ho, g.wo, g.groups, g.sh, g.sw, g.dh,
              g.dw, g.pt, g.pb, g.pl, g.pr}};
}

// ---------------------------------------------------------------------------
// Plans: everything needed to run one convolution, built once per key.
// ---------------------------------------------------------------------------

struct Plan {
  dnnl::primitive conv;
  memory::desc x_md, y_md, b_md;  // NHWC activations, 1-D bias
  memory::desc w_user_md;         // HWIO / hwigo, as XLA stores it
  memory::desc w_prim_md;         // the layout the convolution uses
  memory::desc conv_scratch_md;
  bool reorder_w = false;
  dnnl::primitive w_reorder;      // user->prim (fwd, bwd-data) or prim->user
  memory::desc reorder_scratch_md;
  std::string impl;               // oneDNN implementation name
  // int8 sources with k > 514 reach oneDNN as uint8 x + 128; `fix`
  // subtracts the difference in int32 afterwards (int8_source.h).  oneDNN
  // then runs `batch` images at a time, `chunks` times (else batch = N).
  bool shift_src = false;
  jconv_onednn::SignedSourceFix fix;
  int64_t cig = 0, batch = 0, chunks = 1;

  // Scratch layout inside one XLA allocation:
  // [conv | weights | reorder | shifted source | fix].
  size_t off_w = 0, off_reorder = 0, off_x = 0, off_fix = 0;
  size_t total_scratch = 0;
};

size_t AlignUp(size_t x, size_t a = 64) { return (x + a - 1) / a * a; }

memory::dims WeightDims(const Geometry& g) {
  if (g.groups == 1) return {g.co, g.ci, g.kh, g.kw};
  return {g.groups, g.co / g.groups, g.ci / g.groups, g.kh, g.kw};
}

Tag WeightTag(const Geometry& g) {
  return g.groups == 1 ? Tag::hwio : Tag::hwigo;
}

// Whether oneDNN implementation `impl` computes a uint8 x int8 -> int32
// convolution with k = KH * KW * C_in/groups products per output exactly.
// Measured on oneDNN 3.2 (avx512_core_vnni), with every implementation it
// offers for large-k shapes (README.md, "int8"):
//   * brgconv, brgconv_1x1, brdgmm_dw on VNNI/AMX ISAs store the int32
//     accumulator as it is: exact;
//   * jit_int8, jit_int8_1x1, gemm (x64:gemm_s8u8s32) and ref convert it
//     to float32 and back, exact only while |sum| <= 2^24, which holds for
//     k * 255 * 128 <= 2^24, i.e. k <= 514 (the gemm uses VNNI on a VNNI
//     CPU; ref is plain integer C++);
//   * kernels for ISAs without VNNI (":avx512_core", ":avx2", ":sse41")
//     saturate int16 pair sums (vpmaddubsw): wrong even for small k.
// Products per output (k) up to which every |int32 intermediate| of a
// uint8/int8 x int8 convolution, k * 255 * 128, is at most 2^24.
constexpr int64_t kMaxFloatExactK = (int64_t{1} << 24) / (255 * 128);

bool ExactInt8Impl(const std::string& impl, int64_t k) {
  auto has = [&](const char* s) { return impl.find(s) != std::string::npos; };
  auto starts = [&](const char* s) { return impl.rfind(s, 0) == 0; };
  const bool vnni = has("vnni") || has("amx");
  const bool isa_tagged = has("sse41") || has("avx2") || has("avx512");
  if (isa_tagged && !vnni) return false;
  const bool stores_int32 = vnni && (starts("brgconv:") || starts("brgconv_1x1:") ||
                                     starts("brdgmm_dw:"));
  return stores_int32 || k <= kMaxFloatExactK;
}

// Images per oneDNN call on the shifted int8 path: the largest divisor of N
// whose int32 output fits in about 1 MiB, so that the compensation pass
// finds it in cache.
constexpr int64_t kShiftChunkBytes = int64_t{1} << 20;

int64_t ShiftedBatch(const Geometry& g) {
  const int64_t image = g.ho * g.wo * g.co * 4;
  int64_t best = 1;
  for (int64_t d = 1; d <= g.n; ++d) {
    if (g.n % d == 0 && d * image <= kShiftChunkBytes) best = d;
  }
  return best;
}

// Walks oneDNN's implementation list (best first) to the first exact int8
// one (ExactInt8Impl); throws when there is none.
void SelectExactInt8Impl(dnnl::convolution_forward::primitive_desc* pd,
                         int64_t k) {
  while (!ExactInt8Impl(pd->impl_info_str(), k)) {
    if (!pd->next_impl()) {
      throw std::runtime_error(
          std::string("oneDNN has no exact int8 implementation for this "
                      "convolution on this CPU (the last one offered: ") +
          pd->impl_info_str() + ")");
    }
  }
}

void AddWeightReorderAndScratch(Op op, const Geometry& g,
                                const dnnl::primitive_attr& attr, Plan* plan);

std::shared_ptr<Plan> BuildPlan(Op op, Types t, bool bias,
                                WeightsPolicy policy, const Geometry& g) {
  const dnnl::engine& eng = Engine();
  auto plan = std::make_shared<Plan>();
  const int64_t k = g.kh * g.kw * (g.ci / g.groups);
  plan->shift_src = t.src == Dt::s8 && k > kMaxFloatExactK;
  plan->batch = plan->shift_src ? ShiftedBatch(g) : g.n;
  plan->chunks = g.n / plan->batch;
  plan->x_md = memory::desc({plan->batch, g.ci, g.h, g.w},
                            plan->shift_src ? Dt::u8 : t.src, Tag::nhwc);
  plan->y_md =
      memory::desc({plan->batch, g.co, g.ho, g.wo}, t.dst, Tag::nhwc);
  plan->w_user_md = memory::desc(WeightDims(g), t.wei, WeightTag(g));
  plan->b_md = bias ? memory::desc({g.co}, t.dst, Tag::a) : memory::desc();
  // int8 always lets oneDNN choose the weight layout: with plain weights
  // oneDNN 3.2 has only its gemm and reference int8 convolutions, which are
  // not exact (see ExactInt8Impl).
  const memory::desc w_query =
      policy == WeightsPolicy::kAny || t.is_int8()
          ? memory::desc(WeightDims(g), t.wei, Tag::any)
          : plan->w_user_md;

  const memory::dims strides = {g.sh, g.sw};
  const memory::dims dilates = {g.dh - 1, g.dw - 1};
  const memory::dims pad_l = {g.pt, g.pl};
  const memory::dims pad_r = {g.pb, g.pr};

  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);

  // Forward descriptor: the forward op itself, and the "hint" that oneDNN
  // requires to create backward primitives.  int8 convolutions exist for
  // inference only.
  dnnl::convolution_forward::primitive_desc fwd_pd(
      eng,
      t.is_int8() ? dnnl::prop_kind::forward_inference
                  : dnnl::prop_kind::forward_training,
      dnnl::algorithm::convolution_direct, plan->x_md, w_query, plan->b_md,
      plan->y_md, strides, dilates, pad_l, pad_r, attr);
  if (t.is_int8()) SelectExactInt8Impl(&fwd_pd, k);

  switch (op) {
    case Op::kFwd: {
      plan->w_prim_md = fwd_pd.weights_desc();
      plan->conv_scratch_md = fwd_pd.scratchpad_desc();
      plan->impl = fwd_pd.impl_info_str();
      plan->conv = dnnl::convolution_forward(fwd_pd);
      break;
    }
    case Op::kBwdData: {
      const dnnl::convolution_backward_data::primitive_desc pd(
          eng, dnnl::algorithm::convolution_direct, plan->x_md, w_query,
          plan->y_md, strides, dilates, pad_l, pad_r, fwd_pd, attr);
      plan->w_prim_md = pd.weights_desc();
      plan->conv_scratch_md = pd.scratchpad_desc();
      plan->impl = pd.impl_info_str();
      plan->conv = dnnl::convolution_backward_data(pd);
      break;
    }
    case Op::kBwdWeights: {
      const dnnl::convolution_backward_weights::primitive_desc pd(
          eng, dnnl::algorithm::convolution_direct, plan->x_md, w_query,
          plan->b_md, plan->y_md, strides, dilates, pad_l, pad_r, fwd_pd,
          attr);
      plan->w_prim_md = pd.diff_weights_desc();
      plan->conv_scratch_md = pd.scratchpad_desc();
      plan->impl = pd.impl_info_str();
      plan->conv = dnnl::convolution_backward_weights(pd);
      break;
    }
  }

  AddWeightReorderAndScratch(op, g, attr, plan.get());
  return plan;
}

// The weight reorder (user <-> primitive layout) when the layouts differ,
// the int8-source compensation, and the scratch layout of `plan`.
void AddWeightReorderAndScratch(Op op, const Geometry& g,
                                const dnnl::primitive_attr& attr, Plan* plan) {
  plan->reorder_w = plan->w_prim_md != plan->w_user_md;
  size_t reorder_scratch = 0;
  if (plan->reorder_w) {
    const dnnl::engine& eng = Engine();
    const bool to_prim = op != Op::kBwdWeights;
    const memory::desc& src = to_prim ? plan->w_user_md : plan->w_prim_md;
    const memory::desc& dst = to_prim ? plan->w_prim_md : plan->w_user_md;
    const dnnl::reorder::primitive_desc rpd(eng, src, eng, dst, attr);
    plan->reorder_scratch_md = rpd.scratchpad_desc();
    reorder_scratch = plan->reorder_scratch_md.get_size();
    plan->w_reorder = dnnl::reorder(rpd);
  }
  plan->off_w = AlignUp(plan->conv_scratch_md.get_size());
  plan->off_reorder =
      plan->off_w + AlignUp(plan->reorder_w ? plan->w_prim_md.get_size() : 0);
  plan->off_x = plan->off_reorder + AlignUp(reorder_scratch);
  plan->off_fix =
      plan->off_x + AlignUp(plan->shift_src ? plan->x_md.get_size() : 0);
  if (plan->shift_src) {
    plan->fix = jconv_onednn::SignedSourceFix(
        {g.h, g.kh, g.ho, g.sh, g.dh, g.pt}, {g.w, g.kw, g.wo, g.sw, g.dw, g.pl},
        g.co);
    plan->cig = g.ci / g.groups;
  }
  plan->total_scratch =
      plan->off_fix + AlignUp(plan->shift_src ? plan->fix.scratch_bytes() : 0);
}

// Bounded LRU cache of plans.  Lookups and insertions hold a mutex; plan
// construction (which can take a millisecond) runs outside it, so two
// threads missing on the same key may both build a plan: the first one
// inserted wins and the other is dropped.
class PlanCache {
 public:
  using PlanPtr = std::shared_ptr<const Plan>;

  PlanPtr Lookup(const Key& key) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(key);
    if (it == map_.end()) {
      ++misses_;
      return nullptr;
    }
    ++hits_;
    lru_.splice(lru_.begin(), lru_, it->second);
    return it->second->second;
  }

  PlanPtr Insert(const Key& key, PlanPtr plan) {
    std::lock_guard<std::mutex> lock(mu_);
    if (capacity_ == 0) return plan;
    auto it = map_.find(key);
    if (it != map_.end()) return it->second->second;
    lru_.emplace_front(key, std::move(plan));
    map_.emplace(key, lru_.begin());
    while (map_.size() > capacity_) {
      map_.erase(lru_.back().first);
      lru_.pop_back();
    }
    return lru_.front().second;
  }

  void SetCapacity(size_t capacity) {
    std::lock_guard<std::mutex> lock(mu_);
    capacity_ = capacity;
    while (map_.size() > capacity_) {
      map_.erase(lru_.back().first);
      lru_.pop_back();
    }
  }

  void Clear() {
    std::lock_guard<std::mutex> lock(mu_);
    map_.clear();
    lru_.clear();
    hits_ = misses_ = 0;
  }

  void Stats(int64_t* out) {
    std::lock_guard<std::mutex> lock(mu_);
    out[0] = static_cast<int64_t>(map_.size());
    out[1] = static_cast<int64_t>(capacity_);
    out[2] = hits_;
    out[3] = misses_;
  }

 private:
  std::mutex mu_;
  std::list<std::pair<Key, PlanPtr>> lru_;
  std::unordered_map<Key, std::list<std::pair<Key, PlanPtr>>::iterator,
                     KeyHash>
      map_;
  size_t capacity_ = 512;
  int64_t hits_ = 0, misses_ = 0;
};

PlanCache& Cache() {
  static PlanCache* cache = new PlanCache();  // never destroyed (exit order)
  return *cache;
}

std::shared_ptr<const Plan> GetPlan(Op op, Types t, bool bias,
                                    const Geometry& g) {
  const auto policy =
      static_cast<WeightsPolicy>(g_weights_policy.load(std::memory_order_relaxed));
  const int threads = ApplyThreadSetting();
  const Key key = MakeKey(op, t, bias, policy, threads, g);
  if (auto plan = Cache().Lookup(key)) return plan;
  return Cache().Insert(key, BuildPlan(op, t, bias, policy, g));
}

// ---------------------------------------------------------------------------
// Argument checking.
// ---------------------------------------------------------------------------

std::string DimsStr(ffi::Span<const int64_t> d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(d[i]);
  }
  return s + ")";
}

const char* DtypeName(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F32: return "float32";
    case ffi::DataType::BF16: return "bfloat16";
    case ffi::DataType::F16: return "float16";
    case ffi::DataType::F64: return "float64";
    case ffi::DataType::S32: return "int32";
    case ffi::DataType::S8: return "int8";
    case ffi::DataType::U8: return "uint8";
    default: return "a dtype other than float32/bfloat16";
  }
}

// All buffers of a float convolution share one dtype, float32 or bfloat16.
ffi::Error CheckDtype(std::initializer_list<ffi::DataType> types, Types* out) {
  const ffi::DataType t = *types.begin();
  for (ffi::DataType u : types) {
    if (u != t) {
      return ffi::Error::InvalidArgument(
          std::string(kPrefix) + "all operands must have the same dtype, got " +
          DtypeName(t) + " and " + DtypeName(u));
    }
  }
  if (t == ffi::DataType::F32) {
    *out = Types::Same(Dt::f32);
  } else if (t == ffi::DataType::BF16) {
    if (!Bf16Supported()) {
      return ffi::Error::InvalidArgument(
          std::string(kPrefix) +
          "bfloat16 needs a CPU with native bf16 support (AVX512_BF16, AMX "
          "or AVX2-VNNI-2); this CPU has none, use float32");
    }
    *out = Types::Same(Dt::bf16);
  } else {
    return ffi::Error::InvalidArgument(
        std::string(kPrefix) + "unsupported dtype " + DtypeName(t) +
        "; supported: float32, bfloat16 (and int8/uint8 x int8 -> int32 for "
        "the forward convolution)");
  }
  return ffi::Error::Success();
}

bool IsInteger(ffi::DataType t) {
  return t == ffi::DataType::S8 || t == ffi::DataType::U8 ||
         t == ffi::DataType::S32;
}

// The forward convolution's operand types: a float convolution (see
// CheckDtype), or an integer one: x int8 or uint8, w int8, y int32, no bias.
ffi::Error CheckForwardTypes(ffi::DataType x, ffi::DataType w, ffi::DataType y,
                             const ffi::DataType* b, Types* out) {
  if (!IsInteger(x) && !IsInteger(w) && !IsInteger(y)) {
    return b ? CheckDtype({x, w, *b, y}, out) : CheckDtype({x, w, y}, out);
  }
  auto bad = [](const std::string& msg) {
    return ffi::Error::InvalidArgument(std::string(kPrefix) + msg);
  };
  if ((x != ffi::DataType::S8 && x != ffi::DataType::U8) ||
      w != ffi::DataType::S8 || y != ffi::DataType::S32) {
    return bad(std::string("integer convolutions take x int8 or uint8, w "
                           "int8 and give int32; got x ") +
               DtypeName(x) + ", w " + DtypeName(w) + ", y " + DtypeName(y));
  }
  if (b) return bad("integer convolutions take no bias");
  if (!Int8Supported()) {
    return bad("exact int8 convolutions need a CPU with VNNI or AMX "
               "(AVX512_VNNI, AVX-VNNI); this CPU has neither");
  }
  *out = {x == ffi::DataType::S8 ? Dt::s8 : Dt::u8, Dt::s8, Dt::s32};
  return ffi::Error::Success();
}

// Fills `g` from the attributes and the three 4-D shapes (input, kernel,
// output) and checks that they describe one valid convolution.
ffi::Error MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                        ffi::Span<const int64_t> y,
                        ffi::Span<const int64_t> stride,
                        ffi::Span<const int64_t> padding,
                        ffi::Span<const int64_t> dilation, int64_t groups,
                        Geometry* g) {
  auto bad = [](const std::string& msg) {
    return ffi::Error::InvalidArgument(std::string(kPrefix) + msg);
  };
  if (x.size() != 4 || w.size() != 4 || y.size() != 4) {
    return bad("expected rank-4 NHWC input/output and HWIO kernel, got " +
               DimsStr(x) + ", " + DimsStr(w) + ", " + DimsStr(y));
  }
  if (stride.size() != 2 || padding.size() != 4 || dilation.size() != 2) {
    return bad("stride and dilation need 2 values and padding 4 values");
  }
  if (stride[0] < 1 || stride[1] < 1) return bad("strides must be >= 1");
  if (dilation[0] < 1 || dilation[1] < 1) return bad("dilation must be >= 1");
  for (int64_t p : padding) {
    if (p < 0) return bad("padding must be non-negative");
  }
  if (groups < 1) return bad("groups must be >= 1");
  g->n = x[0]; g->h = x[1]; g->w = x[2]; g->ci = x[3];
  g->kh = w[0]; g->kw = w[1]; g->co = w[3];
  g->ho = y[1]; g->wo = y[2];
  g->groups = groups;
  g->sh = stride[0]; g->sw = stride[1];
  g->dh = dilation[0]; g->dw = dilation[1];
  g->pt = padding[0]; g->pb = padding[1];
  g->pl = padding[2]; g->pr = padding[3];
  if (g->ci % groups != 0 || g->co % groups != 0 || w[2] * groups != g->ci) {
    return bad("channels do not match groups=" + std::to_string(groups) +
               ": input " + DimsStr(x) + ", kernel " + DimsStr(w));
  }
  if (y[0] != g->n || y[3] != g->co) {
    return bad("output " + DimsStr(y) + " does not match input " + DimsStr(x) +
               " and kernel " + DimsStr(w));
  }
  const int64_t ho = OutSize(g->h, g->kh, g->sh, g->dh, g->pt, g->pb);
  const int64_t wo = OutSize(g->w, g->kw, g->sw, g->dw, g->pl, g->pr);
  if (ho != g->ho || wo != g->wo) {
    return bad("output spatial size " + std::to_string(g->ho) + "x" +
               std::to_string(g->wo) + " does not match the geometry (expected " +
               std::to_string(ho) + "x" + std::to_string(wo) + ")");
  }
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------
// Execution.
// ---------------------------------------------------------------------------

// Scratch memory for one call.  XLA's FFI ScratchAllocator is tried first;
// XLA:CPU (jaxlib 0.10.2) does not implement it, so after its first refusal we
// use a per-thread buffer that grows to the largest scratch the thread has
// needed.  Handlers run synchronously on the calling thread, so one buffer
// per thread is never used by two executions at once.  Requests above
// kMaxThreadScratch are served by a one-off heap allocation instead of being
// kept alive.
std::atomic<bool> g_xla_scratch_works{true};
std::atomic<int64_t> g_xla_scratch_calls{0};
std::atomic<int64_t> g_thread_scratch_calls{0};
constexpr size_t kMaxThreadScratch = size_t{256} << 20;

struct FreeDeleter {
  void operator()(char* p) const { std::free(p); }
};
using HeapBlock = std::unique_ptr<char, FreeDeleter>;

HeapBlock AllocAligned(size_t bytes) {
  return HeapBlock(static_cast<char*>(std::aligned_alloc(64, AlignUp(bytes))));
}

class Scratch {
 public:
  Scratch(ffi::ScratchAllocator& alloc, size_t bytes) {
    if (bytes == 0) return;
    if (g_xla_scratch_works.load(std::memory_order_relaxed)) {
      if (auto p = alloc.Allocate(bytes, 64)) {
        g_xla_scratch_calls.fetch_add(1, std::memory_order_relaxed);
        ptr_ = static_cast<char*>(*p);
        return;
      }
      g_xla_scratch_works.store(false, std::memory_order_relaxed);
    }
    g_thread_scratch_calls.fetch_add(1, std::memory_order_relaxed);
    if (bytes > kMaxThreadScratch) {
      own_ = AllocAligned(bytes);
      ptr_ = own_.get();
      return;
    }
    thread_local HeapBlock buffer;
    thread_local size_t capacity = 0;
    if (capacity < bytes) {
      buffer.reset();
      capacity = 0;
      buffer = AllocAligned(bytes);
      if (buffer) capacity = AlignUp(bytes);
    }
    ptr_ = buffer.get();
  }
  char* get() const { return ptr_; }
  bool ok(size_t bytes) const { return bytes == 0 || ptr_ != nullptr; }

 private:
  char* ptr_ = nullptr;
  HeapBlock own_;
};

// Runs `plan` on the given pointers.  For the forward and backward-data ops
// `w` is an input; for backward-weights it is the output (dw).
ffi::Error Execute(Op op, const Plan& plan, void* x, void* w, void* y,
                   void* b, ffi::ScratchAllocator& alloc) {
  const dnnl::engine& eng = Engine();
  dnnl::stream& stream = ThreadStream();
  Scratch scratch(alloc, plan.total_scratch);
  if (!scratch.ok(plan.total_scratch)) {
    return ffi::Error::Internal(std::string(kPrefix) +
                                "could not allocate " +
                                std::to_string(plan.total_scratch) +
                                " bytes of scratch memory");
  }
  char* base = scratch.get();

  memory w_user(plan.w_user_md, eng, w);
  memory w_prim = w_user;
  if (plan.reorder_w) w_prim = memory(plan.w_prim_md, eng, base + plan.off_w);
  auto run_reorder = [&](const memory& from, const memory& to) {
    plan.w_reorder.execute(
        stream, {{DNNL_ARG_FROM, from},
                 {DNNL_ARG_TO, to},
                 {DNNL_ARG_SCRATCHPAD,
                  memory(plan.reorder_scratch_md, eng,
                         base + plan.off_reorder)}});
  };
  if (plan.shift_src) {
    plan.fix.Prepare(static_cast<const int8_t*>(w), plan.cig,
                     base + plan.off_fix);
  }
  if (plan.reorder_w && op != Op::kBwdWeights) run_reorder(w_user, w_prim);

  // One oneDNN call, or (shifted int8 sources) one per `plan.batch` images.
  const size_t x_step = plan.x_md.get_size(), y_step = plan.y_md.get_size();
  for (int64_t c = 0; c < plan.chunks; ++c) {
    void* xc = static_cast<char*>(x) + c * x_step;
    void* yc = static_cast<char*>(y) + c * y_step;
    if (plan.shift_src) {
      jconv_onednn::SignedSourceFix::ShiftSource(xc, base + plan.off_x,
                                                 static_cast<int64_t>(x_step));
      xc = base + plan.off_x;
    }
    std::unordered_map<int, memory> args;
    args.reserve(6);
    args.emplace(DNNL_ARG_SCRATCHPAD, memory(plan.conv_scratch_md, eng, base));
    switch (op) {
      case Op::kFwd:
        args.emplace(DNNL_ARG_SRC, memory(plan.x_md, eng, xc));
        args.emplace(DNNL_ARG_WEIGHTS, w_prim);
        args.emplace(DNNL_ARG_DST, memory(plan.y_md, eng, yc));
        if (b) args.emplace(DNNL_ARG_BIAS, memory(plan.b_md, eng, b));
        break;
      case Op::kBwdData:
        args.emplace(DNNL_ARG_DIFF_SRC, memory(plan.x_md, eng, xc));
        args.emplace(DNNL_ARG_WEIGHTS, w_prim);
        args.emplace(DNNL_ARG_DIFF_DST, memory(plan.y_md, eng, yc));
        break;
      case Op::kBwdWeights:
        args.emplace(DNNL_ARG_SRC, memory(plan.x_md, eng, xc));
        args.emplace(DNNL_ARG_DIFF_WEIGHTS, w_prim);
        args.emplace(DNNL_ARG_DIFF_DST, memory(plan.y_md, eng, yc));
        if (b) args.emplace(DNNL_ARG_DIFF_BIAS, memory(plan.b_md, eng, b));
        break;
    }
    plan.conv.execute(stream, args);
    stream.wait();
    if (plan.shift_src) {
      plan.fix.Apply(static_cast<int32_t*>(yc), plan.batch,
                     base + plan.off_fix);
    }
  }
  if (plan.reorder_w && op == Op::kBwdWeights) {
    run_reorder(w_prim, w_user);
    stream.wait();
  }
  return ffi::Error::Success();
}

// Output for degenerate shapes (an empty batch, zero channels, ...), where
// oneDNN is not called: the result is zero, or the bias for the forward op.
void FillDegenerate(ffi::AnyBuffer::Dimensions dims, Dt dt, void* out,
                    const void* bias) {
  int64_t count = 1;
  for (int64_t d : dims) count *= d;
  const size_t elem = memory::data_type_size(dt);
  if (count == 0) return;
  if (!bias) {
    std::memset(out, 0, static_cast<size_t>(count) * elem);
    return;
  }
  const int64_t c = dims[dims.size() - 1];
  char* dst = static_cast<char*>(out);
  for (int64_t i = 0; i < count / c; ++i) {
    std::memcpy(dst + i * c * elem, bias, static_cast<size_t>(c) * elem);
  }
}

template <typename F>
ffi::Error Guarded(F&& body) {
  // No C++ exception may cross the FFI boundary: turn them into errors.
  try {
    return body();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string(kPrefix) + "oneDNN error (status " +
                                std::to_string(static_cast<int>(e.status)) +
                                "): " + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string(kPrefix) + e.what());
  } catch (...) {
    return ffi::Error::Internal(std::string(kPrefix) + "unknown C++ exception");
  }
}

using I64s = ffi::Span<const int64_t>;

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w,
                   const ffi::AnyBuffer* b, ffi::AnyBuffer y, I64s stride,
                   I64s padding, I64s dilation, int64_t groups,
                   ffi::ScratchAllocator& scratch) {
  return Guarded([&]() -> ffi::Error {
    Types types;
    const ffi::DataType b_type = b ? b->element_type() : ffi::DataType::F32;
    ffi::Error err =
        CheckForwardTypes(x.element_type(), w.element_type(), y.element_type(),
                          b ? &b_type : nullptr, &types);
    if (err.failure()) return err;
    Geometry g;
    err = MakeGeometry(x.dimensions(), w.dimensions(), y.dimensions(), stride,
                       padding, dilation, groups, &g);
    if (err.failure()) return err;
    if (b && (b->dimensions().size() != 1 || b->dimensions()[0] != g.co)) {
      return ffi::Error::InvalidArgument(std::string(kPrefix) + "bias shape " +
                                         DimsStr(b->dimensions()) +
                                         " should be (C_out,)");
    }
    if (y.element_count() == 0) return ffi::Error::Success();
    if (x.element_count() == 0 || w.element_count() == 0) {
      FillDegenerate(y.dimensions(), types.dst, y.untyped_data(),
                     b ? b->untyped_data() : nullptr);
      return ffi::Error::Success();
    }
    auto plan = GetPlan(Op::kFwd, types, b != nullptr, g);
    return Execute(Op::kFwd, *plan, x.untyped_data(), w.untyped_data(),
                   y.untyped_data(), b ? b->untyped_data() : nullptr, scratch);
  });
}

ffi::Error ConvFwd(ffi::AnyBuffer x, ffi::AnyBuffer w,
                   ffi::Result<ffi::AnyBuffer> y, I64s stride, I64s padding,
                   I64s dilation, int64_t groups,
                   ffi::ScratchAllocator scratch) {
  return Forward(x, w, nullptr, *y, stride, padding, dilation, groups,
                 scratch);
}

ffi::Error ConvFwdBias(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b,
                       ffi::Result<ffi::AnyBuffer> y, I64s stride,
                       I64s padding, I64s dilation, int64_t groups,
                       ffi::ScratchAllocator scratch) {
  return Forward(x, w, &b, *y, stride, padding, dilation, groups, scratch);
}

ffi::Error ConvBwdData(ffi::AnyBuffer dy, ffi::AnyBuffer w,
                       ffi::Result<ffi::AnyBuffer> dx, I64s stride,
                       I64s padding, I64s dilation, int64_t groups,
                       ffi::ScratchAllocator scratch) {
  return Guarded([&]() -> ffi::Error {
    Types types;
    ffi::Error err = CheckDtype(
        {dy.element_type(), w.element_type(), dx->element_type()}, &types);
    if (err.failure()) return err;
    Geometry g;
    err = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(),
                       stride, padding, dilation, groups, &g);
    if (err.failure()) return err;
    if (dx->element_count() == 0) return ffi::Error::Success();
    if (dy.element_count() == 0 || w.element_count() == 0) {
      FillDegenerate(dx->dimensions(), types.dst, dx->untyped_data(), nullptr);
      return ffi::Error::Success();
    }
    auto plan = GetPlan(Op::kBwdData, types, false, g);
    return Execute(Op::kBwdData, *plan, dx->untyped_data(), w.untyped_data(),
                   dy.untyped_data(), nullptr, scratch);
  });
}

ffi::Error BackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                           ffi::AnyBuffer dw, ffi::AnyBuffer* db, I64s stride,
                           I64s padding, I64s dilation, int64_t groups,
                           ffi::ScratchAllocator& scratch) {
  return Guarded([&]() -> ffi::Error {
    Types types;
    ffi::Error err =
        db ? CheckDtype({x.element_type(), dy.element_type(),
                         dw.element_type(), db->element_type()},
                        &types)
           : CheckDtype(
                 {x.element_type(), dy.element_type(), dw.element_type()},
                 &types);
    if (err.failure()) return err;
    Geometry g;
    err = MakeGeometry(x.dimensions(), dw.dimensions(), dy.dimensions(),
                       stride, padding, dilation, groups, &g);
    if (err.failure()) return err;
    if (db && (db->dimensions().size() != 1 || db->dimensions()[0] != g.co)) {
      return ffi::Error::InvalidArgument(std::string(kPrefix) +
                                         "bias-gradient shape " +
                                         DimsStr(db->dimensions()) +
                                         " should be (C_out,)");
    }
    if (x.element_count() == 0 || dy.element_count() == 0 ||
        dw.element_count() == 0) {
      // Empty reduction: the gradients are zero.
      FillDegenerate(dw.dimensions(), types.wei, dw.untyped_data(), nullptr);
      if (db) {
        FillDegenerate(db->dimensions(), types.dst, db->untyped_data(),
                       nullptr);
      }
      return ffi::Error::Success();
    }
    auto plan = GetPlan(Op::kBwdWeights, types, db != nullptr, g);
    return Execute(Op::kBwdWeights, *plan, x.untyped_data(), dw.untyped_data(),
                   dy.untyped_data(), db ? db->untyped_data() : nullptr,
                   scratch);
  });
}

ffi::Error ConvBwdWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                          ffi::Result<ffi::AnyBuffer> dw, I64s stride,
                          I64s padding, I64s dilation, int64_t groups,
                          ffi::ScratchAllocator scratch) {
  return BackwardWeights(x, dy, *dw, nullptr, stride, padding, dilation,
                         groups, scratch);
}

ffi::Error ConvBwdWeightsBias(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                              ffi::Result<ffi::AnyBuffer> dw,
                              ffi::Result<ffi::AnyBuffer> db, I64s stride,
                              I64s padding, I64s dilation, int64_t groups,
                              ffi::ScratchAllocator scratch) {
  ffi::AnyBuffer db_buf = *db;
  return BackwardWeights(x, dy, *dw, &db_buf, stride, padding, dilation,
                         groups, scratch);
}

// Attributes shared by every handler, in binding order.
template <typename B>
auto WithAttrs(B binding) {
  return std::move(binding)
      .template Attr<I64s>("stride")
      .template Attr<I64s>("padding")
      .template Attr<I64s>("dilation")
      .template Attr<int64_t>("groups")
      .template Ctx<ffi::ScratchAllocator>();
}

}  // namespace

#define JCONV_EXPORT extern "C" __attribute__((visibility("default")))

// ---------------------------------------------------------------------------
// FFI handler symbols (exported; everything else is built hidden).
// ---------------------------------------------------------------------------

#pragma GCC visibility push(default)

XLA_FFI_DEFINE_HANDLER_SYMBOL(jconv_onednn_conv_fwd, ConvFwd,
                              WithAttrs(ffi::Ffi::Bind()
                                            .Arg<ffi::AnyBuffer>()    // x
                                            .Arg<ffi::AnyBuffer>()    // w
                                            .Ret<ffi::AnyBuffer>()));  // y

XLA_FFI_DEFINE_HANDLER_SYMBOL(jconv_onednn_conv_fwd_bias, ConvFwdBias,
                              WithAttrs(ffi::Ffi::Bind()
                                            .Arg<ffi::AnyBuffer>()    // x
                                            .Arg<ffi::AnyBuffer>()    // w
                                            .Arg<ffi::AnyBuffer>()    // b
                                            .Ret<ffi::AnyBuffer>()));  // y

XLA_FFI_DEFINE_HANDLER_SYMBOL(jconv_onednn_conv_bwd_data, ConvBwdData,
                              WithAttrs(ffi::Ffi::Bind()
                                            .Arg<ffi::AnyBuffer>()    // dy
                                            .Arg<ffi::AnyBuffer>()    // w
                                            .Ret<ffi::AnyBuffer>()));  // dx

XLA_FFI_DEFINE_HANDLER_SYMBOL(jconv_onednn_conv_bwd_weights, ConvBwdWeights,
                              WithAttrs(ffi::Ffi::Bind()
                                            .Arg<ffi::AnyBuffer>()    // x
                                            .Arg<ffi::AnyBuffer>()    // dy
                                            .Ret<ffi::AnyBuffer>()));  // dw

XLA_FFI_DEFINE_HANDLER_SYMBOL(jconv_onednn_conv_bwd_weights_bias,
                              ConvBwdWeightsBias,
                              WithAttrs(ffi::Ffi::Bind()
                                            .Arg<ffi::AnyBuffer>()    // x
                                            .Arg<ffi::AnyBuffer>()    // dy
                                            .Ret<ffi::AnyBuffer>()    // dw
                                            .Ret<ffi::AnyBuffer>()));  // db

#pragma GCC visibility pop

// ---------------------------------------------------------------------------
// Plain C helpers for Python (ctypes).
// ---------------------------------------------------------------------------

// Writes major, minor, patch of the oneDNN library actually loaded.
JCONV_EXPORT void jconv_onednn_version(int32_t* out) {
  const dnnl_version_t* v = dnnl_version();
  out[0] = v->major;
  out[1] = v->minor;
  out[2] = v->patch;
}

JCONV_EXPORT int32_t jconv_onednn_bf16_supported() {
  try {
    return Bf16Supported() ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

JCONV_EXPORT int32_t jconv_onednn_int8_supported() {
  try {
    return Int8Supported() ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

// oneDNN's effective ISA as its integer code (dnnl_cpu_isa_t).
JCONV_EXPORT int32_t jconv_onednn_cpu_isa() {
  return static_cast<int32_t>(dnnl::get_effective_cpu_isa());
}

// out = [entries, capacity, hits, misses, calls with XLA scratch,
//        calls with per-thread scratch]
JCONV_EXPORT void jconv_onednn_cache_stats(int64_t* out) {
  Cache().Stats(out);
  out[4] = g_xla_scratch_calls.load();
  out[5] = g_thread_scratch_calls.load();
}

// Capacity 0 disables caching (each call builds its plan afresh).
JCONV_EXPORT void jconv_onednn_set_cache_capacity(int64_t capacity) {
  Cache().SetCapacity(static_cast<size_t>(std::max<int64_t>(capacity, 0)));
}

JCONV_EXPORT void jconv_onednn_clear_cache() { Cache().Clear(); }

// 0 = let oneDNN pick the weight layout (reorder per call), 1 = plain HWIO.
JCONV_EXPORT void jconv_onednn_set_weights_policy(int32_t policy) {
  g_weights_policy.store(policy == 1 ? 1 : 0);
}

JCONV_EXPORT int32_t jconv_onednn_get_weights_policy() {
  return g_weights_policy.load();
}

// OpenMP threads per convolution; n <= 0 restores the process default.
JCONV_EXPORT void jconv_onednn_set_num_threads(int32_t n) {
  g_num_threads.store(n > 0 ? n : 0);
}

// The thread count convolutions will use.
JCONV_EXPORT int32_t jconv_onednn_get_num_threads() {
  const int n = g_num_threads.load();
  return n > 0 ? n : g_default_threads;
}

// Describes the oneDNN implementation chosen for one convolution, for
// diagnostics.  op: 0 fwd, 1 bwd-data, 2 bwd-weights; dtype: 0 f32, 1 bf16,
// 2 int8 x int8 -> int32, 3 uint8 x int8 -> int32 (forward only).
// geom = [n,h,w,ci, kh,kw,co, sh,sw, dh,dw, pt,pb,pl,pr, groups, bias].
// Writes a NUL-terminated string into buf; returns 0 on success, -1 on error
// (the message is then in buf).
JCONV_EXPORT int32_t jconv_onednn_describe(int32_t op, int32_t dtype,
                                           const int64_t* geom, char* buf,
                                           int64_t buf_len) {
  std::string text;
  int32_t rc = 0;
  try {
    if (op < 0 || op > 2) throw std::invalid_argument("op must be 0, 1 or 2");
    if (dtype < 0 || dtype > 3) {
      throw std::invalid_argument("dtype must be 0, 1, 2 or 3");
    }
    if (dtype >= 2 && op != 0) {
      throw std::invalid_argument("integer convolutions are forward only");
    }
    Geometry g;
    g.n = geom[0]; g.h = geom[1]; g.w = geom[2]; g.ci = geom[3];
    g.kh = geom[4]; g.kw = geom[5]; g.co = geom[6];
    g.sh = geom[7]; g.sw = geom[8]; g.dh = geom[9]; g.dw = geom[10];
    g.pt = geom[11]; g.pb = geom[12]; g.pl = geom[13]; g.pr = geom[14];
    g.groups = geom[15];
    g.ho = OutSize(g.h, g.kh, g.sh, g.dh, g.pt, g.pb);
    g.wo = OutSize(g.w, g.kw, g.sw, g.dw, g.pl, g.pr);
    const Types types[] = {Types::Same(Dt::f32), Types::Same(Dt::bf16),
                           {Dt::s8, Dt::s8, Dt::s32},
                           {Dt::u8, Dt::s8, Dt::s32}};
    auto plan = GetPlan(static_cast<Op>(op), types[dtype], geom[16] != 0, g);
    text = plan->impl;
    if (plan->reorder_w) text += " +weight-reorder";
    text += " scratch=" + std::to_string(plan->total_scratch);
  } catch (const std::exception& e) {
    text = e.what();
    rc = -1;
  }
  if (buf_len > 0) {
    const size_t n = std::min<size_t>(text.size(), buf_len - 1);
    std::memcpy(buf, text.data(), n);
    buf[n] = '\0';
  }
  return rc;
}
