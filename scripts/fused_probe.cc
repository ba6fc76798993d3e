// Hand-fused CPU rollouts of esrl's benchmark policies, plain and EGGROLL rank 1, for
// scripts/fused_probe.py. Not part of the library: they measure how close to plain
// inference a kernel that XLA:CPU does not emit could bring EGGROLL.
//   mlp: 4 -> hidden -> hidden -> 2, tanh (MLP 256x2)
//   gru: 4 -> embed (tanh) -> GRU cell -> dense (tanh) -> 2 (GRU 256, as esrl.policy)
//
// Per step, each thread takes its members in chunks: every wide matmul is one OpenBLAS
// sgemm per chunk (numpy's bundled scipy-openblas, single-threaded); everything else is
// fused into the loops that read the chunk while it is in cache: biases, perturbed
// biases, the rank-1 terms s_i * b_pair (s_i = sign_i sigma x_i . a_pair), activations,
// gates, the next layers' row reductions and the narrow head. The two members of a pair
// are neighbours, so the second read of the pair's noise comes from cache. The
// "environment" is a cheap synthetic update of the observation from the logits.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

extern "C" void scipy_cblas_sgemm64_(int, int, int, int64_t, int64_t, int64_t, float,
                                     const float*, int64_t, const float*, int64_t, float,
                                     float*, int64_t);
extern "C" void scipy_openblas_set_num_threads64_(int);

namespace {

constexpr int IN = 4, OUT = 2;  // CartPole's observation and action sizes

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

inline float fast_sigmoid(float x) { return 0.5f * fast_tanh(0.5f * x) + 0.5f; }

// One perturbable dense layer: kernel (in, out) row-major, bias, and the unit noise of
// every pair, part-major (a: [pairs, in], b and e: [pairs, out]) so that the reads of
// consecutive pairs stream through memory.
struct Layer {
  int in, out;
  const float *w, *c, *a, *b, *e;
};

struct Net {
  int hidden, count;
  Layer layer[5];
};

// sigma times member m's antithetic sign (even members +, odd members -).
inline float signed_sigma(int64_t m, float sigma) { return (m & 1) ? -sigma : sigma; }

// The synthetic environment: the next observation from the logits.
inline void env_step(float* x, const float* y) {
  for (int k = 0; k < IN; k++) x[k] = 0.9f * x[k] + 0.1f * y[k % OUT];
}

// First layer (4 inputs, computed directly): h = tanh(x W + c [+ s b + sg e]); returns
// sg * h . next_a (the next layer's row reduction).
template <bool NOISE>
inline float first_layer(const Layer& L, const float* x, int64_t p, float sg, float* h,
                         const float* next_a) {
  float s = 0.f, acc = 0.f;
  if (NOISE)
    for (int k = 0; k < IN; k++) s += x[k] * L.a[p * IN + k];
  s *= sg;
  const float *b = L.b + p * L.out, *e = L.e + p * L.out;
  for (int j = 0; j < L.out; j++) {
    float v = L.c[j];
    for (int k = 0; k < IN; k++) v += x[k] * L.w[k * L.out + j];
    if (NOISE) v += s * b[j] + sg * e[j];
    v = fast_tanh(v);
    h[j] = v;
    if (NOISE) acc += v * next_a[j];
  }
  return sg * acc;
}

// Last hidden layer's epilogue and the head: out = tanh(y + c [+ s b + sg e]) W3 + ...
template <bool NOISE>
inline void last_layer(const Layer& L, const Layer& head, const float* y, float s,
                       int64_t p, float sg, float* out) {
  const float *b = L.b + p * L.out, *e = L.e + p * L.out, *a3 = head.a + p * head.in;
  float o[OUT] = {}, acc = 0.f;
  for (int j = 0; j < L.out; j++) {
    float v = y[j] + L.c[j];
    if (NOISE) v += s * b[j] + sg * e[j];
    v = fast_tanh(v);
    for (int k = 0; k < OUT; k++) o[k] += v * head.w[j * OUT + k];
    if (NOISE) acc += v * a3[j];
  }
  for (int k = 0; k < OUT; k++) {
    out[k] = o[k] + head.c[k];
    if (NOISE) out[k] += sg * (acc * head.b[p * OUT + k] + head.e[p * OUT + k]);
  }
}

// A chunk of M members from member `first` on: the last hidden layer's epilogue (y: its
// matmul [M, out], s: its row reductions), the head, and the environment step.
template <bool NOISE>
void finish_chunk(const Layer& L, const Layer& head, const float* y, const float* s,
                  int64_t first, int M, float sigma, float* obs, float* logits) {
  for (int m = 0; m < M; m++) {
    const int64_t mem = first + m;
    last_layer<NOISE>(L, head, y + (size_t)m * L.out, s[m], mem / 2,
                      signed_sigma(mem, sigma), logits + m * OUT);
    env_step(obs + m * IN, logits + m * OUT);
  }
}

void sgemm(int M, const Layer& L, const float* x, float* y) {
  scipy_cblas_sgemm64_(101, 111, 111, M, L.out, L.in, 1.f, x, L.in, L.w, L.out, 0.f, y,
                       L.out);
}

// The GRU cell's gates for one member, h updated in place: x3 = x W_in and h3 = h W_rec
// ([r, z, n] each), si and sh their row reductions. Also writes the recurrent (sh) and
// dense (sd) row reductions of the new h.
template <bool NOISE>
inline void gates(const Layer& in, const Layer& rec, const float* __restrict__ x3,
                   const float* __restrict__ h3, float si, float sh_in, int64_t p,
                   float sg, float* __restrict__ h, const float* __restrict__ da,
                   float* sh_out, float* sd_out) {
  const int H = rec.in;
  const float *__restrict__ ic = in.c, *__restrict__ rc = rec.c;
  const float *__restrict__ ib = in.b + p * 3 * H, *__restrict__ ie = in.e + p * 3 * H;
  const float *__restrict__ hb = rec.b + p * 3 * H, *__restrict__ he = rec.e + p * 3 * H;
  const float* __restrict__ ra = rec.a + p * H;
  float acc_h = 0.f, acc_d = 0.f;
  for (int j = 0; j < H; j++) {
    const int z_ = H + j, n_ = 2 * H + j;  // the z and n gates' columns
    float xr = x3[j] + ic[j], xz = x3[z_] + ic[z_], xn = x3[n_] + ic[n_];
    // the recurrent product's bias (and its noise) is the candidate's alone
    float hr = h3[j], hz = h3[z_], hn = h3[n_] + rc[n_];
    if (NOISE) {
      xr += si * ib[j] + sg * ie[j];
      xz += si * ib[z_] + sg * ie[z_];
      xn += si * ib[n_] + sg * ie[n_];
      hr += sh_in * hb[j];
      hz += sh_in * hb[z_];
      hn += sh_in * hb[n_] + sg * he[n_];
    }
    const float r = fast_sigmoid(xr + hr), z = fast_sigmoid(xz + hz);
    const float v = (1.f - z) * fast_tanh(xn + r * hn) + z * h[j];
    h[j] = v;
    if (NOISE) acc_h += v * ra[j], acc_d += v * da[j];
  }
  *sh_out = sg * acc_h;
  *sd_out = sg * acc_d;
}

template <bool NOISE>
void mlp_block(const Net& n, float sigma, float* obs, int64_t first, int64_t count,
               int steps, int chunk, float* logits) {
  const Layer &l1 = n.layer[0], &l2 = n.layer[1], &head = n.layer[2];
  const int H = n.hidden;
  std::vector<float> x1((size_t)chunk * H), x2((size_t)chunk * H), s(chunk);
  for (int t = 0; t < steps; t++) {
    for (int64_t c = 0; c < count; c += chunk) {
      const int M = (int)std::min<int64_t>(chunk, count - c);
      for (int m = 0; m < M; m++) {
        const int64_t mem = first + c + m, p = mem / 2;
        s[m] = first_layer<NOISE>(l1, obs + (c + m) * IN, p, signed_sigma(mem, sigma),
                                  &x1[(size_t)m * H], l2.a + p * H);
      }
      sgemm(M, l2, x1.data(), x2.data());
      finish_chunk<NOISE>(l2, head, x2.data(), s.data(), first + c, M, sigma,
                          obs + c * IN, logits + c * OUT);
    }
  }
}

template <bool NOISE>
void gru_block(const Net& n, float sigma, float* obs, int64_t first, int64_t count,
               int steps, int chunk, float* logits) {
  const Layer &embed = n.layer[0], &in = n.layer[1], &rec = n.layer[2];
  const Layer &dense = n.layer[3], &head = n.layer[4];
  const int H = n.hidden;
  std::vector<float> h((size_t)count * H, 0.f), sh(count, 0.f);  // carry, h . rec.a
  std::vector<float> e((size_t)chunk * H), xi((size_t)chunk * 3 * H);
  std::vector<float> hh((size_t)chunk * 3 * H), y((size_t)chunk * H), si(chunk), sd(chunk);
  for (int t = 0; t < steps; t++) {
    for (int64_t c = 0; c < count; c += chunk) {
      const int M = (int)std::min<int64_t>(chunk, count - c);
      float* hc = &h[(size_t)c * H];
      for (int m = 0; m < M; m++) {
        const int64_t mem = first + c + m, p = mem / 2;
        si[m] = first_layer<NOISE>(embed, obs + (c + m) * IN, p, signed_sigma(mem, sigma),
                                   &e[(size_t)m * H], in.a + p * H);
      }
      sgemm(M, in, e.data(), xi.data());
      sgemm(M, rec, hc, hh.data());
      for (int m = 0; m < M; m++) {  // gates, + the recurrent and dense row reductions
        const int64_t mem = first + c + m, p = mem / 2;
        gates<NOISE>(in, rec, &xi[(size_t)m * 3 * H], &hh[(size_t)m * 3 * H], si[m],
                     sh[c + m], p, signed_sigma(mem, sigma), hc + (size_t)m * H,
                     dense.a + p * H, &sh[c + m], &sd[m]);
      }
      sgemm(M, dense, hc, y.data());
      finish_chunk<NOISE>(dense, head, y.data(), sd.data(), first + c, M, sigma,
                          obs + c * IN, logits + c * OUT);
    }
  }
}

}  // namespace

// Roll out `members` members of policy `kind` (0 mlp: 3 layers, 1 gru: 5 layers) for
// `steps` steps from `obs` [members, 4] (updated in place); `logits` [members, 2]
// receives the last step's outputs. `dims` holds each layer's (in, out); `weights` each
// layer's kernel and bias; `noise` each layer's a, b, e over all pairs, in layer order.
// Members are split over `threads` threads in whole pairs.
extern "C" void probe_rollout(int kind, int hidden, const int* dims,
                              const float* const* weights, const float* noise,
                              float sigma, int use_noise, float* obs, int64_t members,
                              int steps, int chunk, int threads, float* logits) {
  scipy_openblas_set_num_threads64_(1);
  Net n{hidden, kind == 0 ? 3 : 5, {}};
  const int64_t pairs = members / 2;
  for (int i = 0; i < n.count; i++) {
    Layer& L = n.layer[i];
    L.in = dims[2 * i], L.out = dims[2 * i + 1];
    L.w = weights[2 * i], L.c = weights[2 * i + 1];
    L.a = noise, L.b = L.a + pairs * L.in, L.e = L.b + pairs * L.out;
    noise = L.e + pairs * L.out;
  }
  const int64_t per = (pairs + threads - 1) / threads * 2;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; t++) {
    const int64_t first = t * per, count = std::min(per, members - first);
    if (count <= 0) break;
    pool.emplace_back([=] {
      float* o = obs + first * IN;
      float* y = logits + first * OUT;
      auto block = kind == 0 ? (use_noise ? mlp_block<true> : mlp_block<false>)
                             : (use_noise ? gru_block<true> : gru_block<false>);
      block(n, sigma, o, first, count, steps, chunk, y);
    });
  }
  for (auto& th : pool) th.join();
}
