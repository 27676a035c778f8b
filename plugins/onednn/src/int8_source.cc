// See int8_source.h.

#include "int8_source.h"

#include <algorithm>
#include <cstring>

namespace jconv_onednn {

namespace {

size_t AlignUp64(size_t x) { return (x + 63) / 64 * 64; }

// Below this many bytes a pass runs on the calling thread: an OpenMP region
// costs more than it saves on data that sits in cache (and much more when
// other processes keep the cores busy).
constexpr int64_t kParallelBytes = int64_t{1} << 20;

// The loops below, compiled for AVX-512, AVX2 and the baseline, picked at
// load time (the wheel targets any x86-64).
#define JCONV_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

JCONV_CLONES void FlipSign(const uint8_t* src, uint8_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i] ^ 0x80u;
}

JCONV_CLONES void AddWidened(const int8_t* row, uint32_t* sum, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    sum[i] += static_cast<uint32_t>(static_cast<int32_t>(row[i]));
  }
}

JCONV_CLONES void Subtract(uint32_t* y, const uint32_t* c, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] -= c[i];
}

// Smallest k with k * d >= v (d >= 1), for any sign of v.
int64_t CeilDiv(int64_t v, int64_t d) {
  return v >= 0 ? (v + d - 1) / d : -((-v) / d);
}

}  // namespace

SignedSourceFix::SignedSourceFix(const Axis& rows, const Axis& cols,
                                 int64_t co)
    : kh_(rows.k), kw_(cols.k), co_(co), ho_(rows.out), wo_(cols.out) {
  Classes(Ranges(rows), &row_class_, &row_range_);
  Classes(Ranges(cols), &col_class_, &col_range_);
}

std::vector<std::pair<int64_t, int64_t>> SignedSourceFix::Ranges(
    const Axis& a) {
  // Output o reads input o * stride - pad_lo + k * dilation, inside [0, in)
  // for k in [lo, hi).
  std::vector<std::pair<int64_t, int64_t>> out(a.out);
  for (int64_t o = 0; o < a.out; ++o) {
    const int64_t start = o * a.stride - a.pad_lo;
    const int64_t lo = std::clamp<int64_t>(CeilDiv(-start, a.dilation), 0, a.k);
    const int64_t hi =
        std::clamp<int64_t>(CeilDiv(a.in - start, a.dilation), 0, a.k);
    out[o] = {lo, std::max(lo, hi)};
  }
  return out;
}

void SignedSourceFix::Classes(
    const std::vector<std::pair<int64_t, int64_t>>& ranges,
    std::vector<int32_t>* class_of,
    std::vector<std::pair<int64_t, int64_t>>* class_range) {
  class_of->resize(ranges.size());
  class_range->clear();
  for (size_t o = 0; o < ranges.size(); ++o) {
    auto it = std::find(class_range->begin(), class_range->end(), ranges[o]);
    if (it == class_range->end()) {
      class_range->push_back(ranges[o]);
      it = class_range->end() - 1;
    }
    (*class_of)[o] = static_cast<int32_t>(it - class_range->begin());
  }
}

size_t SignedSourceFix::scratch_bytes() const {
  const size_t taps = static_cast<size_t>(kh_ * kw_ * co_) * 4;
  const size_t comp =
      row_range_.size() * col_range_.size() * static_cast<size_t>(co_) * 4;
  return AlignUp64(taps) + AlignUp64(comp);
}

void SignedSourceFix::ShiftSource(const void* x, void* out, int64_t count) {
  const uint8_t* src = static_cast<const uint8_t*>(x);
  uint8_t* dst = static_cast<uint8_t*>(out);
  constexpr int64_t kBlock = int64_t{1} << 16;
  const int64_t blocks = (count + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (count > kParallelBytes)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * kBlock;
    FlipSign(src + begin, dst + begin, std::min(kBlock, count - begin));
  }
}

void SignedSourceFix::Prepare(const int8_t* w, int64_t cig,
                              void* scratch) const {
  // Unsigned arithmetic: int32 wrap-around without undefined behaviour.
  uint32_t* tap_sum = TapSums(scratch);
  uint32_t* comp = Compensation(scratch);
  const int64_t co = co_;

  // tap_sum[kh][kw][o] = sum_i w[kh][kw][i][o]
#pragma omp parallel for schedule(static) if (kh_ * kw_ * cig * co > kParallelBytes)
  for (int64_t t = 0; t < kh_ * kw_; ++t) {
    uint32_t* s = tap_sum + t * co;
    std::memset(s, 0, static_cast<size_t>(co) * 4);
    const int8_t* wt = w + t * cig * co;
    for (int64_t i = 0; i < cig; ++i) AddWidened(wt + i * co, s, co);
  }

  // comp[rc][cc][o] = 128 * sum of tap_sum over the class's in-bounds taps
  const int64_t ncc = static_cast<int64_t>(col_range_.size());
  const int64_t classes = static_cast<int64_t>(row_range_.size()) * ncc;
  for (int64_t rc_cc = 0; rc_cc < classes; ++rc_cc) {
    const auto [kh0, kh1] = row_range_[rc_cc / ncc];
    const auto [kw0, kw1] = col_range_[rc_cc % ncc];
    uint32_t* c = comp + rc_cc * co;
    std::memset(c, 0, static_cast<size_t>(co) * 4);
    for (int64_t kh = kh0; kh < kh1; ++kh) {
      for (int64_t kw = kw0; kw < kw1; ++kw) {
        const uint32_t* s = tap_sum + (kh * kw_ + kw) * co;
        for (int64_t o = 0; o < co; ++o) c[o] += s[o];
      }
    }
    for (int64_t o = 0; o < co; ++o) c[o] *= 128u;
  }
}

void SignedSourceFix::Apply(int32_t* y, int64_t n, const void* scratch) const {
  // y[b][ho][wo][o] -= comp[class(ho)][class(wo)][o]
  const uint32_t* comp = Compensation(const_cast<void*>(scratch));
  const int64_t co = co_, ncc = static_cast<int64_t>(col_range_.size());
  uint32_t* yu = reinterpret_cast<uint32_t*>(y);
#pragma omp parallel for schedule(static) if (n * ho_ * wo_ * co * 4 > kParallelBytes)
  for (int64_t bh = 0; bh < n * ho_; ++bh) {
    const int64_t rc = row_class_[bh % ho_];
    uint32_t* yrow = yu + bh * wo_ * co;
    for (int64_t x = 0; x < wo_; ++x) {
      const uint32_t* c = comp + (rc * ncc + col_class_[x]) * co;
      Subtract(yrow + x * co, c, co);
    }
  }
}

uint32_t* SignedSourceFix::TapSums(void* scratch) const {
  return static_cast<uint32_t*>(scratch);
}

uint32_t* SignedSourceFix::Compensation(void* scratch) const {
  return reinterpret_cast<uint32_t*>(
      static_cast<char*>(scratch) +
      AlignUp64(static_cast<size_t>(kh_ * kw_ * co_) * 4));
}

}  // namespace jconv_onednn
