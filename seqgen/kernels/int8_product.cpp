// y (R, N) = x (R, K) times the int8 weight w (N, K) transposed, output channel n times
// scale[n]: the products of a decoding step under --quantize int8, built by seqgen.quantize
// through TorchInductor's C++ code cache (its compiler, flags and vector instructions).
//
// Converting each int8 weight to a float before multiplying it (TorchInductor's build of the
// product) costs more instructions than reading it: on an AMD Zen 4 a core took int8 weights
// at 11 GB/s that way. Here the weights stay integers and each row of x becomes integers
// instead: x / max|x| * 2^29 rounded, split into a high and a low half of 16 bits, so that
// 16-bit integer dot products (VNNI's vpdpwssd, or AVX2's vpmaddwd) take 32 weights in one
// instruction each. The 29 bits carry x to within 2^-29 of its row's largest value, finer
// than bf16 and as fine as float32's 24 bits for all but the row's smallest values.
#include <torch/csrc/inductor/cpp_prefix.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// acc + the sums of adjacent pairs of a * b (16-bit lanes) in 32-bit lanes
#if defined(__AVX512BW__)
inline __m512i dot_add(__m512i acc, __m512i a, __m512i b) {
#if defined(__AVX512VNNI__)
    return _mm512_dpwssd_epi32(acc, a, b);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
#endif
}
#elif defined(__AVX2__)
inline __m256i dot_add(__m256i acc, __m256i a, __m256i b) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
}

inline int32_t horizontal_sum(__m256i a) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}
#endif

// A block's sum fits in 32 bits whatever the values: 512 * 127 * 2^14 < 2^31.
constexpr int64_t BLOCK = 512;

// sum over k < K of w[k] * v[k], in int64 (blocks summed in int32)
int64_t dot(const int8_t* w, const int16_t* v, int64_t K) {
    int64_t total = 0;
    for (int64_t start = 0; start < K; start += BLOCK) {
        const int64_t end = std::min(K, start + BLOCK);
        int64_t k = start;
        int32_t sum = 0;
        // two accumulators: an addition waits for the one before it in its chain
#if defined(__AVX512BW__)
        __m512i a0 = _mm512_setzero_si512(), a1 = a0;
        for (; k + 64 <= end; k += 64) {
            const __m512i w0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(w + k)));
            const __m512i w1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(w + k + 32)));
            a0 = dot_add(a0, w0, _mm512_loadu_si512(v + k));
            a1 = dot_add(a1, w1, _mm512_loadu_si512(v + k + 32));
        }
        sum = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
#elif defined(__AVX2__)
        __m256i a0 = _mm256_setzero_si256(), a1 = a0;
        for (; k + 32 <= end; k += 32) {
            const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w + k)));
            const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w + k + 16)));
            a0 = dot_add(a0, w0, _mm256_loadu_si256((const __m256i*)(v + k)));
            a1 = dot_add(a1, w1, _mm256_loadu_si256((const __m256i*)(v + k + 16)));
        }
        sum = horizontal_sum(_mm256_add_epi32(a0, a1));
#endif
        for (; k < end; k++) sum += int32_t(w[k]) * v[k];
        total += sum;
    }
    return total;
}

}  // namespace

extern "C" void kernel(float* y, const int8_t* w, const float* x, const float* scale,
                       const int64_t R, const int64_t N, const int64_t K) {
    // each row of x as high and low halves, |high|, |low| <= 2^14:
    // x[k] / step = high[k] * 2^15 + low[k], step = max |x| / 2^29
    std::vector<int16_t> high(R * K), low(R * K);
    std::vector<double> step(R);
    for (int64_t r = 0; r < R; r++) {
        float largest = 0;
        bool finite = true;
        for (int64_t k = 0; k < K; k++) {
            largest = std::max(largest, std::abs(x[r * K + k]));
            finite = finite && std::isfinite(x[r * K + k]);
        }
        if (!finite) {  // NaN for the whole row: a float product gives NaN or infinities
            step[r] = std::nan("");
            continue;  // its halves stay 0
        }
        step[r] = largest > 0 ? double(largest) / double(1 << 29) : 1.0;
        for (int64_t k = 0; k < K; k++) {
            const int32_t whole = int32_t(std::nearbyint(double(x[r * K + k]) / step[r]));
            const int32_t upper = (whole + (1 << 14)) >> 15;  // rounded: low is centred
            high[r * K + k] = int16_t(upper);
            low[r * K + k] = int16_t(whole - upper * 32768);
        }
    }
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t r = 0; r < R; r++) {
            // the row of w is read from memory once: the second product finds it in the cache
            const int64_t sum = dot(w + n * K, high.data() + r * K, K) * 32768
                              + dot(w + n * K, low.data() + r * K, K);
            y[r * N + n] = float(double(sum) * step[r] * scale[n]);
        }
    }
}
