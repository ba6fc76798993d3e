// A hand-fused CPU rollout of esrl's MLP policy (4 -> hidden -> hidden -> 2, tanh), plain
// and EGGROLL rank 1, for scripts/fused_probe.py. Not part of the library: it measures how
// close to plain inference a kernel that XLA:CPU does not emit could bring EGGROLL.
//
// Per step, each thread takes its members in chunks: the hidden matmul is one OpenBLAS
// sgemm per chunk (numpy's bundled scipy-openblas, single-threaded); everything else is
// fused into the loops that read the chunk while it is in cache: bias, the perturbed
// bias, the rank-1 term s_i * b_pair (s_i = sign_i sigma x_i . a_pair), tanh, the next
// layer's row reduction and the narrow head. The two members of a pair are neighbours,
// so the second read of the pair's noise comes from cache.
// The "environment" is a cheap synthetic update of the observation from the logits.
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

extern "C" void scipy_cblas_sgemm64_(int, int, int, int64_t, int64_t, int64_t, float,
                                     const float*, int64_t, const float*, int64_t, float,
                                     float*, int64_t);
extern "C" void scipy_openblas_set_num_threads64_(int);

namespace {

// tanh as a rational function (the approximation Eigen and XLA:CPU use), vectorisable.
inline float fast_tanh(float x) {
  x = std::min(7.90531110763549805f, std::max(-7.90531110763549805f, x));
  const float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 - 8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return x * p / q;
}

constexpr int IN = 4, OUT = 2;  // CartPole's observation and action sizes

struct Net {
  int hidden;
  const float *w1, *c1, *w2, *c2, *w3, *c3;  // kernels (in, out) row-major, biases
};

// The noise, part-major: each part (a1 b1 e1 a2 b2 e2 a3 b3 e3) holds every pair's row,
// so the reads of consecutive pairs stream through memory.
struct Noise {
  const float *a1, *b1, *e1, *a2, *b2, *e2, *a3, *b3, *e3;
  Noise(const float* z, int64_t pairs, int H) {
    const float** parts[] = {&a1, &b1, &e1, &a2, &b2, &e2, &a3, &b3, &e3};
    const int width[] = {IN, H, H, H, H, H, H, OUT, OUT};
    for (int i = 0; i < 9; i++) *parts[i] = z, z += pairs * width[i];
  }
};

// sigma times member m's antithetic sign (even members +, odd members -).
inline float signed_sigma(int64_t m, float sigma) { return (m & 1) ? -sigma : sigma; }

template <bool NOISE>
void rollout_block(const Net& n, const Noise& z, float sigma, float* obs, int64_t first,
                   int64_t count, int steps, int chunk, float* logits) {
  const int H = n.hidden;
  std::vector<float> x1((size_t)chunk * H), x2((size_t)chunk * H), s(chunk);
  for (int t = 0; t < steps; t++) {
    for (int64_t c = 0; c < count; c += chunk) {
      const int M = (int)std::min<int64_t>(chunk, count - c);
      for (int m = 0; m < M; m++) {  // layer 1 (narrow input): direct, + next reduction
        const int64_t mem = first + c + m;
        const int64_t p = mem / 2;
        const float sg = signed_sigma(mem, sigma);
        float x[IN];
        for (int k = 0; k < IN; k++) x[k] = obs[(c + m) * IN + k];
        float s1 = 0.f, acc = 0.f;
        if (NOISE)
          for (int k = 0; k < IN; k++) s1 += x[k] * z.a1[p * IN + k];
        s1 *= sg;
        float* __restrict__ h = &x1[(size_t)m * H];
        for (int j = 0; j < H; j++) {
          float v = n.c1[j];
          for (int k = 0; k < IN; k++) v += x[k] * n.w1[k * H + j];
          if (NOISE) v += s1 * z.b1[p * H + j] + sg * z.e1[p * H + j];
          v = fast_tanh(v);
          h[j] = v;
          if (NOISE) acc += v * z.a2[p * H + j];
        }
        s[m] = sg * acc;
      }
      scipy_cblas_sgemm64_(101, 111, 111, M, H, H, 1.f, x1.data(), H, n.w2, H, 0.f,
                           x2.data(), H);
      for (int m = 0; m < M; m++) {  // layer 2 epilogue, + head (its matmul and reduction)
        const int64_t mem = first + c + m;
        const int64_t p = mem / 2;
        const float sg = signed_sigma(mem, sigma);
        const float* __restrict__ h = &x2[(size_t)m * H];
        const float s2 = s[m];
        float y[OUT] = {}, acc = 0.f;
        for (int j = 0; j < H; j++) {
          float v = h[j] + n.c2[j];
          if (NOISE) v += s2 * z.b2[p * H + j] + sg * z.e2[p * H + j];
          v = fast_tanh(v);
          for (int o = 0; o < OUT; o++) y[o] += v * n.w3[j * OUT + o];
          if (NOISE) acc += v * z.a3[p * H + j];
        }
        float* __restrict__ out = logits + (c + m) * OUT;
        for (int o = 0; o < OUT; o++) {
          out[o] = y[o] + n.c3[o];
          if (NOISE) out[o] += sg * (acc * z.b3[p * OUT + o] + z.e3[p * OUT + o]);
        }
        float* x = obs + (c + m) * IN;  // the synthetic environment
        for (int k = 0; k < IN; k++) x[k] = 0.9f * x[k] + 0.1f * out[k % OUT];
      }
    }
  }
}

}  // namespace

// Roll out `members` members for `steps` steps from `obs` [members, 4] (updated in
// place); `logits` [members, 2] receives the last step's policy outputs. Members are
// split over `threads` threads in whole pairs. `noise` holds the parts of `Noise`.
extern "C" void probe_rollout(int hidden, const float* w1, const float* c1,
                              const float* w2, const float* c2, const float* w3,
                              const float* c3, const float* noise, float sigma,
                              int use_noise, float* obs, int64_t members, int steps,
                              int chunk, int threads, float* logits) {
  scipy_openblas_set_num_threads64_(1);
  const Net n{hidden, w1, c1, w2, c2, w3, c3};
  const Noise z(noise, members / 2, hidden);
  const int64_t per = (members / 2 + threads - 1) / threads * 2;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; t++) {
    const int64_t first = t * per, count = std::min(per, members - first);
    if (count <= 0) break;
    pool.emplace_back([=] {
      float* o = obs + first * IN;
      float* y = logits + first * OUT;
      if (use_noise)
        rollout_block<true>(n, z, sigma, o, first, count, steps, chunk, y);
      else
        rollout_block<false>(n, z, sigma, o, first, count, steps, chunk, y);
    });
  }
  for (auto& th : pool) th.join();
}
