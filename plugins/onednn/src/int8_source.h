// Exact int8 x int8 -> int32 convolutions from oneDNN's uint8 x int8 ones.
//
// VNNI multiplies uint8 by int8, so oneDNN runs an int8 source as uint8
// x + 128 and subtracts 128 * (sum of the weights) afterwards; oneDNN 3.2
// does that subtraction (and the equivalent for a source zero point) in
// float32, which rounds results beyond 2^24 (measured: off by up to 16 at
// 2.9e8).  Its uint8 path stores the int32 accumulator as it is.  So the
// plugin shifts the source itself and subtracts the compensation in int32:
//
//   sum_taps x * w = sum_taps (x + 128) * w - 128 * sum_taps w
//
// where the taps are those that fall inside the unpadded input (padding
// contributes 0 to the left side, and 0 to the shifted convolution too,
// because oneDNN pads the uint8 source with 0).  So the compensation depends
// on the output position only through which kernel rows and columns are
// inside the input: one value per (row class, column class, output channel).
// In int32 two's-complement arithmetic the result is exact whenever it fits
// in int32 (intermediate wrap-around cancels).
//
// Used only when oneDNN's own int8-source path could round: k = KH * KW *
// C_in/groups products with |(x + 128) * w| <= 255 * 128 stay below 2^24 for
// k <= 514, and there oneDNN's float32 compensation is exact.  The caller
// runs oneDNN over a few images at a time, shifting their source just before
// and compensating their output just after, while both are in cache.

#ifndef JCONV_ONEDNN_INT8_SOURCE_H_
#define JCONV_ONEDNN_INT8_SOURCE_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace jconv_onednn {

// One spatial axis of a convolution.
struct Axis {
  int64_t in = 0, k = 0, out = 0, stride = 1, dilation = 1, pad_lo = 0;
};

class SignedSourceFix {
 public:
  SignedSourceFix() = default;
  SignedSourceFix(const Axis& rows, const Axis& cols, int64_t co);

  // Bytes of scratch Prepare and Apply need (64-byte aligned pieces).
  size_t scratch_bytes() const;

  // out[i] = x[i] + 128 as uint8 (a bit flip), for `count` bytes.
  static void ShiftSource(const void* x, void* out, int64_t count);

  // Computes, into `scratch`, 128 * (sum of w over the input channels and
  // the in-bounds taps) per (row class, column class, output channel).
  // w: (KH, KW, cig, Co) int8, the HWIO kernel (grouped: memory h, w, i, g, o).
  void Prepare(const int8_t* w, int64_t cig, void* scratch) const;

  // y (n, Ho, Wo, Co), int32, computed from the shifted source: subtracts
  // what Prepare computed into `scratch`.
  void Apply(int32_t* y, int64_t n, const void* scratch) const;

 private:
  // Kernel index range [lo, hi) inside the input, per output index.
  static std::vector<std::pair<int64_t, int64_t>> Ranges(const Axis& a);
  static void Classes(const std::vector<std::pair<int64_t, int64_t>>& ranges,
                      std::vector<int32_t>* class_of,
                      std::vector<std::pair<int64_t, int64_t>>* class_range);

  uint32_t* TapSums(void* scratch) const;
  uint32_t* Compensation(void* scratch) const;

  int64_t kh_ = 0, kw_ = 0, co_ = 0, ho_ = 0, wo_ = 0;
  std::vector<int32_t> row_class_, col_class_;
  std::vector<std::pair<int64_t, int64_t>> row_range_, col_range_;
};

}  // namespace jconv_onednn

#endif  // JCONV_ONEDNN_INT8_SOURCE_H_
