// jconv_onednn: oneDNN CPU convolutions exposed as XLA typed-FFI handlers.
//
// Layouts (row-major), by the `layout` attribute:
//   0 (NHWC): x (N, H, W, C_in), w (KH, KW, C_in / groups, C_out) HWIO,
//             y (N, Ho, Wo, C_out);
//   1 (NCHW): x (N, C_in, H, W), w (C_out, C_in / groups, KH, KW) OIHW,
//             y (N, C_out, Ho, Wo).
//   For groups > 1 output channel g * (C_out / groups) + o belongs to group
//   g (oneDNN's hwigo / goihw).  b: (C_out,).
//
// Handlers (names as registered from Python):
//   jconv_onednn_conv_fwd            (x, w)        -> y   (float or int8)
//   jconv_onednn_conv_fwd_bias       (x, w, b)     -> y   (float)
//   jconv_onednn_conv_bwd_data       (dy, w)       -> dx
//   jconv_onednn_conv_bwd_weights    (x, dy)       -> dw
//   jconv_onednn_conv_bwd_weights_bias (x, dy)     -> (dw, db)
// Attributes (all handlers):
//   stride   = [sh, sw]                  (>= 1)
//   padding  = [top, bottom, left, right] (>= 0)
//   dilation = [dh, dw]                  (>= 1, JAX convention; oneDNN gets d-1)
//   groups   = int                       (>= 1)
//   layout   = int                       (0 NHWC, 1 NCHW)
// and the forward handlers
//   activation = int                     (0 none, 1 relu: y = max(0, conv + b),
//                                         a oneDNN post-op, float only)
//
// Float convolutions: every tensor has the same dtype, float32 or bfloat16;
// oneDNN accumulates in float32 and writes the output in the input dtype.
// Integer convolutions (forward only, no bias, NHWC): x int8 or uint8, w
// int8, y int32, the exact int32 sum of the products (what lax computes with
// preferred_element_type=int32).  They run only on CPUs with VNNI or AMX,
// where oneDNN's int8 kernels multiply-accumulate exactly (see Int8Supported).
//
// Plans (plan.h): the oneDNN primitive and the reorders between the caller's
// layouts and the primitive's, built once per convolution and cached.
// oneDNN's own primitive cache only memoizes primitive *creation* from an
// already-built descriptor; building the descriptor itself (implementation
// dispatch) is not cached by oneDNN and is the dominant cost for small
// convolutions, hence the plan cache.
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
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>

#include "int8_source.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "plan.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace jconv_onednn;  // NOLINT: the plan types

constexpr char kPrefix[] = "jconv_onednn: ";

// A CPU stream is cheap but not free to create; one per calling thread.
dnnl::stream& ThreadStream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

size_t AlignUp(size_t x, size_t a = 64) { return (x + a - 1) / a * a; }

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

using I64s = ffi::Span<const int64_t>;

// The attributes every handler takes (see the top of this file).
struct Attrs {
  I64s stride, padding, dilation;
  int64_t groups = 1, layout = 0;
  int64_t activation = 0;  // forward only: 0 none, 1 relu (a oneDNN post-op)
};

// Fills `g` from the attributes and the three 4-D shapes (input, kernel,
// output) and checks that they describe one valid convolution.
ffi::Error MakeGeometry(I64s x, I64s w, I64s y, const Attrs& attrs,
                        Geometry* g) {
  const I64s stride = attrs.stride, padding = attrs.padding,
             dilation = attrs.dilation;
  const int64_t groups = attrs.groups, layout = attrs.layout;
  auto bad = [](const std::string& msg) {
    return ffi::Error::InvalidArgument(std::string(kPrefix) + msg);
  };
  if (layout != 0 && layout != 1) {
    return bad("layout must be 0 (NHWC) or 1 (NCHW), got " +
               std::to_string(layout));
  }
  const bool nchw = layout == 1;
  if (x.size() != 4 || w.size() != 4 || y.size() != 4) {
    return bad(std::string("expected rank-4 ") +
               (nchw ? "NCHW input/output and OIHW" : "NHWC input/output and HWIO") +
               " kernel, got " + DimsStr(x) + ", " + DimsStr(w) + ", " + DimsStr(y));
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
  // Positions of (batch, channels, height, width) and of the kernel's
  // (height, width, in, out) in the caller's layout.
  const int a[4] = {0, nchw ? 1 : 3, nchw ? 2 : 1, nchw ? 3 : 2};
  const int k[4] = {nchw ? 2 : 0, nchw ? 3 : 1, nchw ? 1 : 2, nchw ? 0 : 3};
  g->nchw = nchw;
  g->n = x[a[0]]; g->ci = x[a[1]]; g->h = x[a[2]]; g->w = x[a[3]];
  g->kh = w[k[0]]; g->kw = w[k[1]]; g->co = w[k[3]];
  g->ho = y[a[2]]; g->wo = y[a[3]];
  g->groups = groups;
  g->sh = stride[0]; g->sw = stride[1];
  g->dh = dilation[0]; g->dw = dilation[1];
  g->pt = padding[0]; g->pb = padding[1];
  g->pl = padding[2]; g->pr = padding[3];
  if (g->ci % groups != 0 || g->co % groups != 0 || w[k[2]] * groups != g->ci) {
    return bad("channels do not match groups=" + std::to_string(groups) +
               ": input " + DimsStr(x) + ", kernel " + DimsStr(w));
  }
  if (y[a[0]] != g->n || y[a[1]] != g->co) {
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

// The memory of operand `o` the primitive uses: the caller's buffer, or its
// scratch copy in the primitive's layout.
memory PrimMemory(const Operand& o, void* user, char* base) {
  return memory(o.prim, Engine(), o.reorder.on ? base + o.off : user);
}

// Copies `o` between the caller's buffer and its scratch copy: into the
// primitive's layout for an input, back to the caller's for an output.
void RunReorder(const Operand& o, void* user, char* base,
                dnnl::stream& stream) {
  const dnnl::engine& eng = Engine();
  const memory mine(o.user, eng, user), prim(o.prim, eng, base + o.off);
  o.reorder.prim.execute(
      stream, {{DNNL_ARG_FROM, o.input ? mine : prim},
               {DNNL_ARG_TO, o.input ? prim : mine},
               {DNNL_ARG_SCRATCHPAD,
                memory(o.reorder.scratch_md, eng, base + o.reorder.off_scratch)}});
}

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
  const Operand* operands[3] = {&plan.x, &plan.w, &plan.y};
  void* buffers[3] = {x, w, y};
  if (plan.shift_src) {
    plan.fix.Prepare(static_cast<const int8_t*>(w), plan.cig,
                     base + plan.off_fix);
  }
  for (int i = 0; i < 3; ++i) {
    const Operand& o = *operands[i];
    if (o.reorder.on && o.input) RunReorder(o, buffers[i], base, stream);
  }

  // One oneDNN call, or (shifted int8 sources) one per `plan.batch` images.
  const size_t x_step = plan.x.user.get_size(), y_step = plan.y.user.get_size();
  for (int64_t c = 0; c < plan.chunks; ++c) {
    void* xc = static_cast<char*>(x) + c * x_step;
    void* yc = static_cast<char*>(y) + c * y_step;
    if (plan.shift_src) {
      SignedSourceFix::ShiftSource(xc, base + plan.off_x,
                                   static_cast<int64_t>(x_step));
      xc = base + plan.off_x;
    }
    const memory xm = PrimMemory(plan.x, xc, base);
    const memory wm = PrimMemory(plan.w, w, base);
    const memory ym = PrimMemory(plan.y, yc, base);
    std::unordered_map<int, memory> args;
    args.reserve(6);
    args.emplace(DNNL_ARG_SCRATCHPAD, memory(plan.conv_scratch_md, eng, base));
    switch (op) {
      case Op::kFwd:
        args.emplace(DNNL_ARG_SRC, xm);
        args.emplace(DNNL_ARG_WEIGHTS, wm);
        args.emplace(DNNL_ARG_DST, ym);
        if (b) args.emplace(DNNL_ARG_BIAS, memory(plan.b_md, eng, b));
        break;
      case Op::kBwdData:
        args.emplace(DNNL_ARG_DIFF_SRC, xm);
        args.emplace(DNNL_ARG_WEIGHTS, wm);
        args.emplace(DNNL_ARG_DIFF_DST, ym);
        break;
      case Op::kBwdWeights:
        args.emplace(DNNL_ARG_SRC, xm);
        args.emplace(DNNL_ARG_DIFF_WEIGHTS, wm);
        args.emplace(DNNL_ARG_DIFF_DST, ym);
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
  for (int i = 0; i < 3; ++i) {
    const Operand& o = *operands[i];
    if (o.reorder.on && !o.input) RunReorder(o, buffers[i], base, stream);
  }
  stream.wait();
  return ffi::Error::Success();
}

// Output for degenerate shapes (an empty batch, zero channels, ...), where
// oneDNN is not called: the result is zero, or the bias for the forward op.
void FillDegenerate(ffi::AnyBuffer::Dimensions dims, Dt dt, void* out,
                    const void* bias, bool nchw = false) {
  int64_t count = 1;
  for (int64_t d : dims) count *= d;
  const size_t elem = memory::data_type_size(dt);
  if (count == 0) return;
  if (!bias) {
    std::memset(out, 0, static_cast<size_t>(count) * elem);
    return;
  }
  char* dst = static_cast<char*>(out);
  if (nchw) {  // each (n, c) plane holds bias[c]
    const int64_t c = dims[1], plane = dims[2] * dims[3];
    for (int64_t i = 0; i < count / plane; ++i) {
      const char* value = static_cast<const char*>(bias) + (i % c) * elem;
      for (int64_t j = 0; j < plane; ++j) {
        std::memcpy(dst + (i * plane + j) * elem, value, elem);
      }
    }
    return;
  }
  const int64_t c = dims[dims.size() - 1];
  for (int64_t i = 0; i < count / c; ++i) {
    std::memcpy(dst + i * c * elem, bias, static_cast<size_t>(c) * elem);
  }
}

// max(0, y) in place (NaN stays NaN, as in oneDNN's relu and jax.nn.relu),
// for the degenerate outputs (the bias) of a forward convolution with a relu
// epilogue.
void Relu(ffi::AnyBuffer y, Dt dt) {
  const int64_t count = static_cast<int64_t>(y.element_count());
  if (dt == Dt::f32) {
    float* p = static_cast<float*>(y.untyped_data());
    for (int64_t i = 0; i < count; ++i) {
      if (p[i] < 0.f) p[i] = 0.f;
    }
    return;
  }
  uint16_t* p = static_cast<uint16_t*>(y.untyped_data());  // bfloat16 bits
  for (int64_t i = 0; i < count; ++i) {
    const bool nan = (p[i] & 0x7f80u) == 0x7f80u && (p[i] & 0x007fu);
    if ((p[i] & 0x8000u) && !nan) p[i] = 0;
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

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w,
                   const ffi::AnyBuffer* b, ffi::AnyBuffer y,
                   const Attrs& attrs, ffi::ScratchAllocator& scratch) {
  return Guarded([&]() -> ffi::Error {
    Types types;
    const ffi::DataType b_type = b ? b->element_type() : ffi::DataType::F32;
    ffi::Error err =
        CheckForwardTypes(x.element_type(), w.element_type(), y.element_type(),
                          b ? &b_type : nullptr, &types);
    if (err.failure()) return err;
    Geometry g;
    err = MakeGeometry(x.dimensions(), w.dimensions(), y.dimensions(), attrs,
                       &g);
    if (err.failure()) return err;
    if (types.is_int8() && g.nchw) {
      return ffi::Error::InvalidArgument(
          std::string(kPrefix) + "integer convolutions take NHWC (layout 0)");
    }
    if (attrs.activation != 0 && (attrs.activation != 1 || types.is_int8())) {
      return ffi::Error::InvalidArgument(
          std::string(kPrefix) + "activation must be 0 (none) or 1 (relu, float "
          "convolutions), got " + std::to_string(attrs.activation));
    }
    if (b && (b->dimensions().size() != 1 || b->dimensions()[0] != g.co)) {
      return ffi::Error::InvalidArgument(std::string(kPrefix) + "bias shape " +
                                         DimsStr(b->dimensions()) +
                                         " should be (C_out,)");
    }
    if (y.element_count() == 0) return ffi::Error::Success();
    if (x.element_count() == 0 || w.element_count() == 0) {
      FillDegenerate(y.dimensions(), types.dst, y.untyped_data(),
                     b ? b->untyped_data() : nullptr, g.nchw);
      if (attrs.activation == 1) Relu(y, types.dst);
      return ffi::Error::Success();
    }
    auto plan = GetPlan(Op::kFwd, types, b != nullptr, g, attrs.activation == 1);
    return Execute(Op::kFwd, *plan, x.untyped_data(), w.untyped_data(),
                   y.untyped_data(), b ? b->untyped_data() : nullptr, scratch);
  });
}

ffi::Error ConvFwd(ffi::AnyBuffer x, ffi::AnyBuffer w,
                   ffi::Result<ffi::AnyBuffer> y, I64s stride, I64s padding,
                   I64s dilation, int64_t groups, int64_t layout,
                   int64_t activation, ffi::ScratchAllocator scratch) {
  return Forward(x, w, nullptr, *y,
                 {stride, padding, dilation, groups, layout, activation},
                 scratch);
}

ffi::Error ConvFwdBias(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b,
                       ffi::Result<ffi::AnyBuffer> y, I64s stride,
                       I64s padding, I64s dilation, int64_t groups,
                       int64_t layout, int64_t activation,
                       ffi::ScratchAllocator scratch) {
  return Forward(x, w, &b, *y,
                 {stride, padding, dilation, groups, layout, activation},
                 scratch);
}

ffi::Error ConvBwdData(ffi::AnyBuffer dy, ffi::AnyBuffer w,
                       ffi::Result<ffi::AnyBuffer> dx, I64s stride,
                       I64s padding, I64s dilation, int64_t groups,
                       int64_t layout, ffi::ScratchAllocator scratch) {
  return Guarded([&]() -> ffi::Error {
    Types types;
    ffi::Error err = CheckDtype(
        {dy.element_type(), w.element_type(), dx->element_type()}, &types);
    if (err.failure()) return err;
    Geometry g;
    err = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(),
                       {stride, padding, dilation, groups, layout}, &g);
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
                           ffi::AnyBuffer dw, ffi::AnyBuffer* db,
                           const Attrs& attrs,
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
    err = MakeGeometry(x.dimensions(), dw.dimensions(), dy.dimensions(), attrs,
                       &g);
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
                          int64_t layout, ffi::ScratchAllocator scratch) {
  return BackwardWeights(x, dy, *dw, nullptr,
                         {stride, padding, dilation, groups, layout}, scratch);
}

ffi::Error ConvBwdWeightsBias(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                              ffi::Result<ffi::AnyBuffer> dw,
                              ffi::Result<ffi::AnyBuffer> db, I64s stride,
                              I64s padding, I64s dilation, int64_t groups,
                              int64_t layout, ffi::ScratchAllocator scratch) {
  ffi::AnyBuffer db_buf = *db;
  return BackwardWeights(x, dy, *dw, &db_buf,
                         {stride, padding, dilation, groups, layout}, scratch);
}

// Attributes shared by every handler, in binding order.
template <typename B>
auto WithGeometry(B&& binding) {
  return std::forward<B>(binding)
      .template Attr<I64s>("stride")
      .template Attr<I64s>("padding")
      .template Attr<I64s>("dilation")
      .template Attr<int64_t>("groups")
      .template Attr<int64_t>("layout");
}

template <typename B>
auto WithAttrs(B&& binding) {
  return WithGeometry(std::forward<B>(binding))
      .template Ctx<ffi::ScratchAllocator>();
}

// The forward handlers also take the epilogue.
template <typename B>
auto WithForwardAttrs(B&& binding) {
  return WithGeometry(std::forward<B>(binding))
      .template Attr<int64_t>("activation")
      .template Ctx<ffi::ScratchAllocator>();
}

}  // namespace

#define JCONV_EXPORT extern "C" __attribute__((visibility("default")))

// ---------------------------------------------------------------------------
// FFI handler symbols (exported; everything else is built hidden).
// ---------------------------------------------------------------------------

#pragma GCC visibility push(default)

XLA_FFI_DEFINE_HANDLER_SYMBOL(jconv_onednn_conv_fwd, ConvFwd,
                              WithForwardAttrs(ffi::Ffi::Bind()
                                            .Arg<ffi::AnyBuffer>()    // x
                                            .Arg<ffi::AnyBuffer>()    // w
                                            .Ret<ffi::AnyBuffer>()));  // y

XLA_FFI_DEFINE_HANDLER_SYMBOL(jconv_onednn_conv_fwd_bias, ConvFwdBias,
                              WithForwardAttrs(ffi::Ffi::Bind()
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
  CacheStats(out);
  out[4] = g_xla_scratch_calls.load();
  out[5] = g_thread_scratch_calls.load();
}

// Capacity 0 disables caching (each call builds its plan afresh).
JCONV_EXPORT void jconv_onednn_set_cache_capacity(int64_t capacity) {
  SetCacheCapacity(static_cast<size_t>(std::max<int64_t>(capacity, 0)));
}

JCONV_EXPORT void jconv_onednn_clear_cache() { ClearCache(); }

// 0 = let oneDNN pick the weight layout (reorder per call), 1 = plain HWIO.
JCONV_EXPORT void jconv_onednn_set_weights_policy(int32_t policy) {
  g_weights_policy.store(policy == 1 ? 1 : 0);
}

JCONV_EXPORT int32_t jconv_onednn_get_weights_policy() {
  return g_weights_policy.load();
}

// Activation layout: 0 = per convolution (ActivationsAny), 1 = the caller's
// as it is, 2 = oneDNN's choice with reorders.
JCONV_EXPORT void jconv_onednn_set_activations_policy(int32_t policy) {
  g_acts_policy.store(policy == 1 || policy == 2 ? policy : 0);
}

JCONV_EXPORT int32_t jconv_onednn_get_activations_policy() {
  return g_acts_policy.load();
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
// geom = [n,h,w,ci, kh,kw,co, sh,sw, dh,dw, pt,pb,pl,pr, groups, bias, nchw].
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
    g.nchw = geom[17] != 0;
    g.ho = OutSize(g.h, g.kh, g.sh, g.dh, g.pt, g.pb);
    g.wo = OutSize(g.w, g.kw, g.sw, g.dw, g.pl, g.pr);
    const Types types[] = {Types::Same(Dt::f32), Types::Same(Dt::bf16),
                           {Dt::s8, Dt::s8, Dt::s32},
                           {Dt::u8, Dt::s8, Dt::s32}};
    auto plan = GetPlan(static_cast<Op>(op), types[dtype], geom[16] != 0, g);
    text = plan->impl;
    if (plan->w.reorder.on) text += " +weight-reorder";
    if (plan->x.reorder.on) text += " +src-reorder";
    if (plan->y.reorder.on) text += " +dst-reorder";
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
