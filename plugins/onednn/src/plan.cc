// Plans and their cache (plan.h).

#include "plan.h"

#include <array>
#include <list>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <utility>

#include <omp.h>

namespace jconv_onednn {

const dnnl::engine& Engine() {
  static const dnnl::engine* engine =
      new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
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

std::atomic<int> g_weights_policy{static_cast<int>(WeightsPolicy::kAny)};
std::atomic<int> g_acts_policy{static_cast<int>(ActsPolicy::kAuto)};

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

int64_t OutSize(int64_t in, int64_t k, int64_t s, int64_t d, int64_t p0,
                int64_t p1) {
  const int64_t span = (k - 1) * d + 1;
  const int64_t padded = in + p0 + p1;
  if (padded < span) return 0;
  return (padded - span) / s + 1;
}

namespace {

// ---------------------------------------------------------------------------
// Layout choices.
// ---------------------------------------------------------------------------

memory::dims WeightDims(const Geometry& g) {
  if (g.groups == 1) return {g.co, g.ci, g.kh, g.kw};
  return {g.groups, g.co / g.groups, g.ci / g.groups, g.kh, g.kw};
}

Tag WeightTag(const Geometry& g) {
  if (g.nchw) return g.groups == 1 ? Tag::oihw : Tag::goihw;
  return g.groups == 1 ? Tag::hwio : Tag::hwigo;
}

// kAuto: whether oneDNN chooses the activation layout (and the plan
// reorders the caller's buffers to and from it).  NCHW buffers: always; with
// plain NCHW activations oneDNN 3.2 has only its im2col/GEMM and reference
// convolutions for most layers, while with blocked ones it runs its jit
// kernels, and its reorders cost less than the difference (README.md).
// NHWC buffers: as they are (brgconv takes NHWC directly).
bool ActivationsAny(ActsPolicy policy, Types t, const Geometry& g) {
  if (t.is_int8()) return false;  // the int8 paths take NHWC as it is
  switch (policy) {
    case ActsPolicy::kPlain: return false;
    case ActsPolicy::kAny: return true;
    case ActsPolicy::kAuto: break;
  }
  return g.nchw;
}

memory::desc AnyOf(const memory::desc& md) {
  return memory::desc(md.get_dims(), md.get_data_type(), Tag::any);
}

// ---------------------------------------------------------------------------
// Exact int8 (README.md, "int8").
// ---------------------------------------------------------------------------

// Products per output (k) up to which every |int32 intermediate| of a
// uint8/int8 x int8 convolution, k * 255 * 128, is at most 2^24.
constexpr int64_t kMaxFloatExactK = (int64_t{1} << 24) / (255 * 128);

// Whether oneDNN implementation `impl` computes a uint8 x int8 -> int32
// convolution with k = KH * KW * C_in/groups products per output exactly.
// Measured on oneDNN 3.2 (avx512_core_vnni), with every implementation it
// offers for large-k shapes:
//   * brgconv, brgconv_1x1, brdgmm_dw on VNNI/AMX ISAs store the int32
//     accumulator as it is: exact;
//   * jit_int8, jit_int8_1x1, gemm (x64:gemm_s8u8s32) and ref convert it
//     to float32 and back, exact only while |sum| <= 2^24, which holds for
//     k <= kMaxFloatExactK (the gemm uses VNNI on a VNNI CPU; ref is plain
//     integer C++);
//   * kernels for ISAs without VNNI (":avx512_core", ":avx2", ":sse41")
//     saturate int16 pair sums (vpmaddubsw): wrong even for small k.
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

// ---------------------------------------------------------------------------
// Building a plan.
// ---------------------------------------------------------------------------

size_t AlignUp(size_t x, size_t a = 64) { return (x + a - 1) / a * a; }

// Consecutive 64-byte aligned pieces of one scratch allocation.
struct ScratchLayout {
  size_t total = 0;
  size_t Add(size_t bytes) {
    const size_t at = total;
    total += AlignUp(bytes);
    return at;
  }
};

// The reorder of `o` when its two layouts differ, and its scratch pieces.
void AddReorder(Operand* o, bool input, const dnnl::primitive_attr& attr,
                ScratchLayout* scratch) {
  o->input = input;
  o->reorder.on = o->prim != o->user;
  if (!o->reorder.on) return;
  const dnnl::engine& eng = Engine();
  const dnnl::reorder::primitive_desc rpd(eng, input ? o->user : o->prim, eng,
                                          input ? o->prim : o->user, attr);
  o->reorder.scratch_md = rpd.scratchpad_desc();
  o->reorder.prim = dnnl::reorder(rpd);
  o->off = scratch->Add(o->prim.get_size());
  o->reorder.off_scratch = scratch->Add(o->reorder.scratch_md.get_size());
}

// The convolution primitive of `op` from the forward descriptor (which
// backward primitives need as their hint), and the layouts it uses.
void AddPrimitive(Op op, const dnnl::convolution_forward::primitive_desc& fwd,
                  const memory::desc& x, const memory::desc& w,
                  const memory::desc& y, const dnnl::primitive_attr& attr,
                  const Geometry& g, Plan* plan) {
  const dnnl::engine& eng = Engine();
  const memory::dims strides = {g.sh, g.sw}, dilates = {g.dh - 1, g.dw - 1};
  const memory::dims pad_l = {g.pt, g.pl}, pad_r = {g.pb, g.pr};
  const auto direct = dnnl::algorithm::convolution_direct;
  switch (op) {
    case Op::kFwd:
      plan->x.prim = fwd.src_desc();
      plan->w.prim = fwd.weights_desc();
      plan->y.prim = fwd.dst_desc();
      plan->conv_scratch_md = fwd.scratchpad_desc();
      plan->impl = fwd.impl_info_str();
      plan->conv = dnnl::convolution_forward(fwd);
      break;
    case Op::kBwdData: {
      const dnnl::convolution_backward_data::primitive_desc pd(
          eng, direct, x, w, y, strides, dilates, pad_l, pad_r, fwd, attr);
      plan->x.prim = pd.diff_src_desc();
      plan->w.prim = pd.weights_desc();
      plan->y.prim = pd.diff_dst_desc();
      plan->conv_scratch_md = pd.scratchpad_desc();
      plan->impl = pd.impl_info_str();
      plan->conv = dnnl::convolution_backward_data(pd);
      break;
    }
    case Op::kBwdWeights: {
      const dnnl::convolution_backward_weights::primitive_desc pd(
          eng, direct, x, w, plan->b_md, y, strides, dilates, pad_l, pad_r,
          fwd, attr);
      plan->x.prim = pd.src_desc();
      plan->w.prim = pd.diff_weights_desc();
      plan->y.prim = pd.diff_dst_desc();
      plan->conv_scratch_md = pd.scratchpad_desc();
      plan->impl = pd.impl_info_str();
      plan->conv = dnnl::convolution_backward_weights(pd);
      break;
    }
  }
}

std::shared_ptr<Plan> BuildPlan(Op op, Types t, bool bias, bool relu,
                                WeightsPolicy weights, ActsPolicy acts,
                                const Geometry& g) {
  auto plan = std::make_shared<Plan>();
  const int64_t k = g.kh * g.kw * (g.ci / g.groups);
  plan->shift_src = t.src == Dt::s8 && k > kMaxFloatExactK;
  plan->batch = plan->shift_src ? ShiftedBatch(g) : g.n;
  plan->chunks = g.n / plan->batch;
  const Tag act_tag = g.nchw ? Tag::nchw : Tag::nhwc;
  plan->x.user = memory::desc({plan->batch, g.ci, g.h, g.w},
                              plan->shift_src ? Dt::u8 : t.src, act_tag);
  plan->y.user =
      memory::desc({plan->batch, g.co, g.ho, g.wo}, t.dst, act_tag);
  plan->w.user = memory::desc(WeightDims(g), t.wei, WeightTag(g));
  plan->b_md = bias ? memory::desc({g.co}, t.dst, Tag::a) : memory::desc();
  // int8 always lets oneDNN choose the weight layout: with plain weights
  // oneDNN 3.2 has only its gemm and reference int8 convolutions, which are
  // not exact (see ExactInt8Impl).
  const bool acts_any = ActivationsAny(acts, t, g);
  const memory::desc x = acts_any ? AnyOf(plan->x.user) : plan->x.user;
  const memory::desc y = acts_any ? AnyOf(plan->y.user) : plan->y.user;
  const memory::desc w = weights == WeightsPolicy::kAny || t.is_int8()
                             ? AnyOf(plan->w.user)
                             : plan->w.user;

  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::primitive_attr fwd_attr;  // the forward op's, with its epilogue
  fwd_attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (relu) {  // (attributes are handles: a copy of `attr` would share its post-ops)
    dnnl::post_ops post;
    post.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    fwd_attr.set_post_ops(post);
  }
  // int8 convolutions exist for inference only.
  dnnl::convolution_forward::primitive_desc fwd(
      Engine(),
      t.is_int8() ? dnnl::prop_kind::forward_inference
                  : dnnl::prop_kind::forward_training,
      dnnl::algorithm::convolution_direct, x, w, plan->b_md, y,
      {g.sh, g.sw}, {g.dh - 1, g.dw - 1}, {g.pt, g.pl}, {g.pb, g.pr},
      op == Op::kFwd ? fwd_attr : attr);
  if (t.is_int8()) SelectExactInt8Impl(&fwd, k);
  AddPrimitive(op, fwd, x, w, y, attr, g, plan.get());

  // Scratch: [conv | each reorder's copy and scratch | shifted x | fix].
  ScratchLayout scratch;
  scratch.Add(plan->conv_scratch_md.get_size());
  AddReorder(&plan->w, op != Op::kBwdWeights, attr, &scratch);
  AddReorder(&plan->x, op != Op::kBwdData, attr, &scratch);
  AddReorder(&plan->y, op != Op::kFwd, attr, &scratch);
  if (plan->shift_src) {
    plan->off_x = scratch.Add(plan->x.user.get_size());
    plan->fix = SignedSourceFix({g.h, g.kh, g.ho, g.sh, g.dh, g.pt},
                                {g.w, g.kw, g.wo, g.sw, g.dw, g.pl}, g.co);
    plan->cig = g.ci / g.groups;
    plan->off_fix = scratch.Add(plan->fix.scratch_bytes());
  }
  plan->total_scratch = scratch.total;
  return plan;
}

// ---------------------------------------------------------------------------
// The cache.
// ---------------------------------------------------------------------------

struct Key {
  std::array<int64_t, 28> v;
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

Key MakeKey(Op op, Types t, bool bias, bool relu, WeightsPolicy weights,
            ActsPolicy acts, int threads, const Geometry& g) {
  return Key{{static_cast<int64_t>(op), static_cast<int64_t>(t.src),
              static_cast<int64_t>(t.wei), static_cast<int64_t>(t.dst),
              bias ? 1 : 0, relu ? 1 : 0, static_cast<int64_t>(weights),
              static_cast<int64_t>(acts), threads, g.nchw ? 1 : 0, g.n, g.h,
              g.w, g.ci, g.kh, g.kw, g.co, g.ho, g.wo, g.groups, g.sh, g.sw,
              g.dh, g.dw, g.pt, g.pb, g.pl, g.pr}};
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
    Trim();
    return lru_.front().second;
  }

  void SetCapacity(size_t capacity) {
    std::lock_guard<std::mutex> lock(mu_);
    capacity_ = capacity;
    Trim();
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
  void Trim() {
    while (map_.size() > capacity_) {
      map_.erase(lru_.back().first);
      lru_.pop_back();
    }
  }

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

}  // namespace

std::shared_ptr<const Plan> GetPlan(Op op, Types t, bool bias,
                                    const Geometry& g, bool relu) {
  const auto weights = static_cast<WeightsPolicy>(
      g_weights_policy.load(std::memory_order_relaxed));
  const auto acts =
      static_cast<ActsPolicy>(g_acts_policy.load(std::memory_order_relaxed));
  const int threads = ApplyThreadSetting();
  const Key key = MakeKey(op, t, bias, relu, weights, acts, threads, g);
  if (auto plan = Cache().Lookup(key)) return plan;
  return Cache().Insert(key, BuildPlan(op, t, bias, relu, weights, acts, g));
}

void CacheStats(int64_t* out) { Cache().Stats(out); }
void SetCacheCapacity(size_t capacity) { Cache().SetCapacity(capacity); }
void ClearCache() { Cache().Clear(); }

}  // namespace jconv_onednn
