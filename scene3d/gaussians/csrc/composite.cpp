// Tiled front-to-back alpha compositing on CPU (OpenMP over tiles), forward and backward.
//
// Semantics of scene3d/gaussians/composite.py (the pure-torch reference) and gsplat's kernel, pixel centres at +0.5:
//   power = 0.5 (a dx^2 + c dy^2) + b dx dy,  dx = mean_x - pixel_x,  (a, b, c) the conic
//   alpha = min(0.999, opacity exp(-power)); skipped if alpha < 1/255
//   a Gaussian that would bring the transmittance to <= 1e-4 is not composited and stops the pixel.
// Inputs are flat over (image, Gaussian): ids = image * N + gaussian, as in TileBins.pair_ids.
// The backward replays each pixel front to back (the same float operations as the forward, so it stops at the
// same Gaussian) with dL/dalpha_i = T_i g.c_i - (g.S_i - g_A T_final) / (1 - alpha_i), S_i = features behind i.
// Gradients go to per-thread buffers, each thread taking a contiguous run of tiles that holds an equal share of
// the work the forward measured per tile; buffers are summed in thread order: deterministic for a thread count.
// float32 runs the SIMD kernels (8 pixels of a tile row at once, GCC vector extensions, an AVX2 clone chosen at
// run time where the CPU has it); float64 runs the scalar kernels, the readable statement of the same loops.
// Forward and backward of one dtype share the code that decides alpha and the early stop, so the backward's
// replay stops where the forward stopped.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

struct Tiling {
  int64_t ts, tiles_x, tiles_y, width, height;
};

struct TileRect {
  int64_t img, ox, oy, pw, ph;
};

TileRect tile_rect(int64_t tile, const Tiling& t) {
  const int64_t per = t.tiles_x * t.tiles_y, rem = tile % per;
  TileRect r{tile / per, (rem % t.tiles_x) * t.ts, (rem / t.tiles_x) * t.ts, 0, 0};
  r.pw = std::min(t.ts, t.width - r.ox);
  r.ph = std::min(t.ts, t.height - r.oy);
  return r;
}

// One Gaussian's constants, computed once per call (not once per tile it touches).
template <typename scalar_t>
struct Splat {
  scalar_t mx, my, a, b, c, op, level;  // level: power above which alpha < 1/255 for sure
  double hx, hy;                        // half-widths of the box of the ellipse power <= level; < 0: the whole tile
};

template <typename scalar_t>
Splat<scalar_t> make_splat(int64_t id, const scalar_t* means, const scalar_t* conics, const scalar_t* opac) {
  Splat<scalar_t> s{means[2 * id], means[2 * id + 1], conics[3 * id], conics[3 * id + 1], conics[3 * id + 2],
                    opac[id], 0, -1, -1};
  s.level = std::log(std::max(static_cast<scalar_t>(255.0) * s.op, static_cast<scalar_t>(1e-30))) +
            static_cast<scalar_t>(1e-3);
  const double det = static_cast<double>(s.a) * s.c - static_cast<double>(s.b) * s.b;
  if (det > 0 && s.level > 0) {
    const double hx = std::sqrt(2.0 * s.level * s.c / det), hy = std::sqrt(2.0 * s.level * s.a / det);
    if (std::isfinite(hx) && std::isfinite(hy)) s.hx = hx, s.hy = hy;
  }
  return s;
}

// The constants of all M Gaussians into `out` (the forward computes them, the backward reuses them).
template <typename scalar_t>
void make_splats(int64_t M, const scalar_t* means, const scalar_t* conics, const scalar_t* opac,
                 Splat<scalar_t>* out) {
  at::parallel_for(0, M, 2048, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) out[i] = make_splat(i, means, conics, opac);
  });
}

// Pixels of tile r that splat s can reach, [x0, x1) x [y0, y1) in tile coordinates: the box of the ellipse
// power <= level (half-widths sqrt(2 level Sigma_xx), Sigma = conic^-1) widened by a pixel; the whole tile
// if the conic is degenerate. Pixels outside it would skip s anyway (alpha < 1/255).
struct Span {
  int64_t x0, x1, y0, y1;
};

template <typename scalar_t>
Span splat_span(const Splat<scalar_t>& s, const TileRect& r) {
  if (!(s.level > 0)) return Span{0, 0, 0, r.ph};
  if (s.hx < 0) return Span{0, r.pw, 0, r.ph};
  auto lo = [](double v, int64_t n) { return std::clamp<int64_t>(static_cast<int64_t>(std::floor(v)), 0, n); };
  auto hi = [](double v, int64_t n) { return std::clamp<int64_t>(static_cast<int64_t>(std::ceil(v)) + 1, 0, n); };
  const double cx = s.mx - r.ox - 0.5, cy = s.my - r.oy - 0.5;  // mean in tile pixel-index coordinates
  return Span{lo(cx - s.hx - 1, r.pw), hi(cx + s.hx, r.pw), lo(cy - s.hy - 1, r.ph), hi(cy + s.hy, r.ph)};
}

std::vector<int64_t> active_tiles(const int64_t* count, int64_t n_tiles) {
  std::vector<int64_t> out;
  for (int64_t t = 0; t < n_tiles; ++t)
    if (count[t] > 0) out.push_back(t);
  return out;
}

// The forward's order: longest lists first, so the dynamic schedule does not end on one heavy tile.
std::vector<int64_t> tiles_by_count(const int64_t* count, int64_t n_tiles) {
  std::vector<int64_t> out = active_tiles(count, n_tiles);
  std::stable_sort(out.begin(), out.end(), [&](int64_t a, int64_t b) { return count[a] > count[b]; });
  return out;
}

// The forward's work of the tiles before each (prefix sums over `tiles`, each tile counted at least once).
std::vector<int64_t> work_before(const std::vector<int64_t>& tiles, const int64_t* work) {
  std::vector<int64_t> before(tiles.size() + 1, 0);
  for (size_t k = 0; k < tiles.size(); ++k) before[k + 1] = before[k] + std::max<int64_t>(work[tiles[k]], 1);
  return before;
}

// Thread tid's tiles [first, last): a contiguous run holding 1/nt of the forward's work (balanced, deterministic).
std::pair<size_t, size_t> thread_run(const std::vector<int64_t>& before, int tid, int nt) {
  auto owner = [&](size_t k) {
    return std::min<int64_t>(nt - 1, (before[k] + before[k + 1]) * nt / (2 * before.back()));
  };
  const size_t n = before.size() - 1;
  size_t first = 0;
  while (first < n && owner(first) < tid) ++first;
  size_t last = first;
  while (last < n && owner(last) == tid) ++last;
  return {first, last};
}

// Alpha of splat s at offset (dx, dy), or 0 if skipped; `e` receives exp(-power).
template <typename scalar_t>
inline scalar_t splat_alpha(const Splat<scalar_t>& s, scalar_t dx, scalar_t dy, scalar_t& e) {
  const scalar_t power = static_cast<scalar_t>(0.5) * (s.a * dx * dx + s.c * dy * dy) + s.b * dx * dy;
  if (power > s.level) return 0;
  e = std::exp(-power);
  const scalar_t alpha = std::min(s.op * e, static_cast<scalar_t>(0.999));
  return alpha < static_cast<scalar_t>(1.0 / 255.0) ? 0 : alpha;
}

template <typename scalar_t>
void forward_scalar(const Splat<scalar_t>* splats, const scalar_t* feats,
                    int64_t D, const int64_t* ids, const int64_t* start, const int64_t* count, int64_t n_tiles,
                    const Tiling& t, scalar_t* acc, scalar_t* trans, int64_t* work, int threads) {
  const std::vector<int64_t> tiles = tiles_by_count(count, n_tiles);
  const scalar_t t_min = static_cast<scalar_t>(1e-4);
#pragma omp parallel num_threads(threads)
  {
    std::vector<scalar_t> T(t.ts * t.ts), A(t.ts * t.ts * D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < static_cast<int64_t>(tiles.size()); ++k) {
      const TileRect r = tile_rect(tiles[k], t);
      const int64_t P = r.pw * r.ph;
      std::fill(T.begin(), T.begin() + P, scalar_t(1));
      std::fill(A.begin(), A.begin() + P * D, scalar_t(0));
      int64_t alive = P, cost = 0;
      const int64_t* list = ids + start[tiles[k]];
      for (int64_t j = 0; j < count[tiles[k]] && alive > 0; ++j) {
        const Splat<scalar_t>& s = splats[list[j]];
        const scalar_t* f = feats + list[j] * D;
        const Span sp = splat_span(s, r);
        cost += 4 + (sp.y1 - sp.y0) * (sp.x1 - sp.x0);
        for (int64_t y = sp.y0; y < sp.y1; ++y) {
          const scalar_t dy = s.my - static_cast<scalar_t>(r.oy + y + 0.5);
          for (int64_t x = sp.x0; x < sp.x1; ++x) {
            const int64_t p = y * r.pw + x;
            if (T[p] == 0) continue;  // stopped
            scalar_t e;
            const scalar_t alpha = splat_alpha(s, s.mx - static_cast<scalar_t>(r.ox + x + 0.5), dy, e);
            if (alpha == 0) continue;
            const scalar_t tn = T[p] * (1 - alpha);
            if (tn <= t_min) {
              trans[(r.img * t.height + r.oy + y) * t.width + r.ox + x] = T[p];
              T[p] = 0;
              --alive;
              continue;
            }
            const scalar_t w = alpha * T[p];
            scalar_t* a = A.data() + p * D;
            for (int64_t d = 0; d < D; ++d) a[d] += w * f[d];
            T[p] = tn;
          }
        }
      }
      work[tiles[k]] = cost;
      for (int64_t y = 0; y < r.ph; ++y)
        for (int64_t x = 0; x < r.pw; ++x) {
          const int64_t p = y * r.pw + x, pix = (r.img * t.height + r.oy + y) * t.width + r.ox + x;
          if (T[p] != 0) trans[pix] = T[p];
          std::copy(A.data() + p * D, A.data() + (p + 1) * D, acc + pix * D);
        }
    }
  }
}

template <typename scalar_t>
void backward_scalar(const Splat<scalar_t>* splats, const scalar_t* feats,
                     int64_t D, const int64_t* ids, const int64_t* start, const int64_t* count, int64_t n_tiles,
                     const Tiling& t, const scalar_t* acc, const scalar_t* trans, const scalar_t* g_acc,
                     const scalar_t* g_alpha, const int64_t* work, scalar_t* buf, int64_t M, int threads) {
  const std::vector<int64_t> tiles = active_tiles(count, n_tiles);
  const scalar_t t_min = static_cast<scalar_t>(1e-4);
  const int64_t stride = 6 + D;  // per Gaussian: means (2), conics (3), opacity, features (D)
  const std::vector<int64_t> before = work_before(tiles, work);
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    for (int b = tid; b < threads; b += nt)  // each thread zeroes its own buffer (and any a missing thread leaves)
      std::fill(buf + b * M * stride, buf + (b + 1) * M * stride, scalar_t(0));
    scalar_t* out = buf + static_cast<int64_t>(tid) * M * stride;
    const int64_t Pmax = t.ts * t.ts;
    std::vector<scalar_t> T(Pmax), gF(Pmax), gATf(Pmax), cum(Pmax), gfeat(D);
    std::vector<const scalar_t*> gp(Pmax);
    const auto [first, last] = thread_run(before, tid, nt);
    for (size_t k = first; k < last; ++k) {
      const TileRect r = tile_rect(tiles[k], t);
      int64_t alive = r.pw * r.ph;
      for (int64_t y = 0; y < r.ph; ++y)
        for (int64_t x = 0; x < r.pw; ++x) {
          const int64_t p = y * r.pw + x, pix = (r.img * t.height + r.oy + y) * t.width + r.ox + x;
          gp[p] = g_acc + pix * D;
          scalar_t dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += gp[p][d] * acc[pix * D + d];
          T[p] = 1;
          gF[p] = dot;
          gATf[p] = g_alpha[pix] * trans[pix];
          cum[p] = 0;
        }
      const int64_t* list = ids + start[tiles[k]];
      for (int64_t j = 0; j < count[tiles[k]] && alive > 0; ++j) {
        const Splat<scalar_t>& s = splats[list[j]];
        const scalar_t* f = feats + list[j] * D;
        scalar_t gm0 = 0, gm1 = 0, gc0 = 0, gc1 = 0, gc2 = 0, go = 0;
        bool touched = false;
        std::fill(gfeat.begin(), gfeat.end(), scalar_t(0));
        const Span sp = splat_span(s, r);
        for (int64_t y = sp.y0; y < sp.y1; ++y) {
          const scalar_t dy = s.my - static_cast<scalar_t>(r.oy + y + 0.5);
          for (int64_t x = sp.x0; x < sp.x1; ++x) {
            const int64_t p = y * r.pw + x;
            if (T[p] == 0) continue;
            const scalar_t dx = s.mx - static_cast<scalar_t>(r.ox + x + 0.5);
            scalar_t e;
            const scalar_t alpha = splat_alpha(s, dx, dy, e);
            if (alpha == 0) continue;
            const scalar_t tn = T[p] * (1 - alpha);
            if (tn <= t_min) {
              T[p] = 0;
              --alive;
              continue;
            }
            touched = true;
            const scalar_t w = alpha * T[p];
            const scalar_t* g = gp[p];
            scalar_t gc = 0;
            for (int64_t d = 0; d < D; ++d) {
              gc += g[d] * f[d];
              gfeat[d] += w * g[d];
            }
            cum[p] += w * gc;
            if (s.op * e < static_cast<scalar_t>(0.999)) {  // a clamped alpha has no gradient
              const scalar_t d_alpha = T[p] * gc - ((gF[p] - cum[p]) - gATf[p]) / (1 - alpha);
              const scalar_t d_power = -d_alpha * alpha;
              gm0 += d_power * (s.a * dx + s.b * dy);
              gm1 += d_power * (s.b * dx + s.c * dy);
              gc0 += d_power * static_cast<scalar_t>(0.5) * dx * dx;
              gc1 += d_power * dx * dy;
              gc2 += d_power * static_cast<scalar_t>(0.5) * dy * dy;
              go += d_alpha * e;
            }
            T[p] = tn;
          }
        }
        if (!touched) continue;
        scalar_t* o = out + list[j] * stride;
        o[0] += gm0;
        o[1] += gm1;
        o[2] += gc0;
        o[3] += gc1;
        o[4] += gc2;
        o[5] += go;
        for (int64_t d = 0; d < D; ++d) o[6 + d] += gfeat[d];
      }
    }
  }
}

// ---- float32: 8 pixels of a tile row at once ---------------------------------------------------------------------

// Vectors never cross a call: the helpers are always inlined into each clone (an AVX2 caller and a default-target
// callee would disagree on how a vector is passed).
#pragma GCC diagnostic ignored "-Wpsabi"
constexpr int kLanes = 8;
typedef float vf __attribute__((vector_size(32), aligned(32)));
typedef int32_t vi __attribute__((vector_size(32), aligned(32)));
const vf kZero = {};
const vf kLane = {0, 1, 2, 3, 4, 5, 6, 7};
const vi kLaneI = {0, 1, 2, 3, 4, 5, 6, 7};

[[gnu::always_inline]] inline vf broadcast(float x) { return kZero + x; }

[[gnu::always_inline]] inline bool any(vi m) {
  uint64_t w[4];
  std::memcpy(w, &m, sizeof w);
  return (w[0] | w[1] | w[2] | w[3]) != 0;
}

[[gnu::always_inline]] inline float hsum(vf v) {  // lane order fixed: deterministic
  float s = 0;
  for (int l = 0; l < kLanes; ++l) s += v[l];
  return s;
}

// exp(x) for x <= 0, clamped below at -80 (Cephes' expf: 2^n e^r, |r| <= ln 2 / 2, a degree-6 polynomial).
[[gnu::always_inline]] inline vf exp_neg(vf x) {
  x = x < -80.0f ? broadcast(-80.0f) : x;
  const vf magic = broadcast(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits
  const vf t = x * 1.44269504088896341f + magic;
  const vf n = t - magic;
  const vf r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  vf p = broadcast(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  return (vf)((vi)p + (((vi)t - (vi)magic) << 23));
}

// Splat s on the 8 pixels of vector c of tile row y (its span sp, their transmittance T): which lanes it reaches
// (in the span, not stopped, alpha >= 1/255), which of those it would stop (T (1 - alpha) <= 1e-4) and which it
// composites, with exp(-power), alpha (and whether it is unclamped) and the transmittance after it. The forward
// and the backward both call this, so the backward's replay stops where the forward stopped.
struct RowAlpha {
  float dy;
  vf dx, e, alpha, tn;
  vi hit, stop, comp, unclamped;
};

[[gnu::always_inline]] inline RowAlpha row_alpha(const Splat<float>& s, const TileRect& r, const Span& sp, int64_t y,
                                                 int64_t c, vf T) {
  RowAlpha o;
  const vi xs = kLaneI + static_cast<int32_t>(c * kLanes);
  o.dy = s.my - static_cast<float>(r.oy + y + 0.5);
  o.dx = s.mx - (kLane + static_cast<float>(r.ox + c * kLanes + 0.5));
  const vf power = 0.5f * (s.a * o.dx * o.dx + s.c * o.dy * o.dy) + s.b * o.dx * o.dy;
  o.hit = (xs >= static_cast<int32_t>(sp.x0)) & (xs < static_cast<int32_t>(sp.x1)) & (power <= s.level) & (T != 0.0f);
  if (!any(o.hit)) return o;
  o.e = exp_neg(-power);
  const vf oe = s.op * o.e;
  o.unclamped = oe < 0.999f;
  o.alpha = o.unclamped ? oe : broadcast(0.999f);
  o.hit &= o.alpha >= static_cast<float>(1.0 / 255.0);
  o.tn = T * (1.0f - o.alpha);
  o.stop = o.hit & (o.tn <= 1e-4f);
  o.comp = o.hit & ~o.stop;
  return o;
}

// Per-thread scratch of n vectors, 32-byte aligned (std::vector would drop the vector type's alignment).
struct Scratch {
  explicit Scratch(int64_t n)
      : p(static_cast<vf*>(::operator new(std::max<int64_t>(n, 1) * sizeof(vf), std::align_val_t(32)))) {}
  ~Scratch() { ::operator delete(p, std::align_val_t(32)); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  vf* p;
};

// Vectors of pixels of a tile: row y's pixels x are lane x % 8 of vector y * K + x / 8.
struct TileVectors {
  int64_t K, V;  // vectors per row, per tile
  explicit TileVectors(int64_t ts) : K((ts + kLanes - 1) / kLanes), V(ts * K) {}
};

// Composite one tile; T and A (planar: feature d of vector v at A[d V + v]) are this thread's scratch.
// Returns the tile's work (pixel visits).
__attribute__((target_clones("avx2", "default")))
int64_t forward_tile(const Splat<float>* splats, const float* feats, int64_t D, const int64_t* list, int64_t n,
                     const TileRect& r, const Tiling& t, const TileVectors& tv, vf* T, vf* A, float* acc,
                     float* trans) {
  const int64_t K = tv.K, V = tv.V;
  for (int64_t v = 0; v < V; ++v) {  // 1 on the tile's pixels, 0 on the lanes past its right edge
    const vi x = kLaneI + static_cast<int32_t>((v % K) * kLanes);
    T[v] = x < static_cast<int32_t>(r.pw) ? broadcast(1) : kZero;
  }
  std::fill(A, A + D * V, kZero);
  int64_t alive = r.pw * r.ph, cost = 0;
  for (int64_t j = 0; j < n && alive > 0; ++j) {
    const Splat<float>& s = splats[list[j]];
    const float* f = feats + list[j] * D;
    const Span sp = splat_span(s, r);
    cost += 4 + (sp.y1 - sp.y0) * (sp.x1 - sp.x0);
    if (sp.x1 <= sp.x0) continue;
    for (int64_t y = sp.y0; y < sp.y1; ++y)
      for (int64_t c = sp.x0 / kLanes; c <= (sp.x1 - 1) / kLanes; ++c) {
        const int64_t v = y * K + c;
        const RowAlpha ra = row_alpha(s, r, sp, y, c, T[v]);
        if (!any(ra.hit)) continue;
        if (any(ra.stop))
          for (int l = 0; l < kLanes; ++l)
            if (ra.stop[l]) {
              trans[(r.img * t.height + r.oy + y) * t.width + r.ox + c * kLanes + l] = T[v][l];
              --alive;
            }
        const vf w = ra.comp ? ra.alpha * T[v] : kZero;
        for (int64_t d = 0; d < D; ++d) A[d * V + v] += w * f[d];
        T[v] = ra.stop ? kZero : (ra.comp ? ra.tn : T[v]);
      }
  }
  for (int64_t y = 0; y < r.ph; ++y)
    for (int64_t x = 0; x < r.pw; ++x) {
      const int64_t v = y * K + x / kLanes, l = x % kLanes, pix = (r.img * t.height + r.oy + y) * t.width + r.ox + x;
      if (T[v][l] != 0) trans[pix] = T[v][l];
      for (int64_t d = 0; d < D; ++d) acc[pix * D + d] = A[d * V + v][l];
    }
  return cost;
}

void forward_simd(const Splat<float>* splats, const float* feats, int64_t D, const int64_t* ids, const int64_t* start,
                  const int64_t* count, int64_t n_tiles, const Tiling& t, float* acc, float* trans, int64_t* work,
                  int threads) {
  const std::vector<int64_t> tiles = tiles_by_count(count, n_tiles);
  const TileVectors tv(t.ts);
#pragma omp parallel num_threads(threads)
  {
    Scratch T(tv.V), A(tv.V * D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < static_cast<int64_t>(tiles.size()); ++k)
      work[tiles[k]] = forward_tile(splats, feats, D, ids + start[tiles[k]], count[tiles[k]], tile_rect(tiles[k], t),
                                    t, tv, T.p, A.p, acc, trans);
  }
}

// The gradients of one tile into `out` ([M, 6 + D] per Gaussian); T, gF, gATf, cum, G (planar, as A above) and
// gfeat are this thread's scratch.
__attribute__((target_clones("avx2", "default")))
void backward_tile(const Splat<float>* splats, const float* feats, int64_t D, const int64_t* list, int64_t n,
                   const TileRect& r, const Tiling& t, const TileVectors& tv, const float* acc, const float* trans,
                   const float* g_acc, const float* g_alpha, vf* T, vf* gF, vf* gATf, vf* cum, vf* G, vf* gfeat,
                   float* out) {
  const int64_t K = tv.K, V = tv.V, stride = 6 + D;
  std::fill(T, T + V, kZero);
  std::fill(gF, gF + V, kZero);
  std::fill(gATf, gATf + V, kZero);
  std::fill(cum, cum + V, kZero);
  std::fill(G, G + D * V, kZero);
  for (int64_t y = 0; y < r.ph; ++y)
    for (int64_t x = 0; x < r.pw; ++x) {
      const int64_t v = y * K + x / kLanes, l = x % kLanes, pix = (r.img * t.height + r.oy + y) * t.width + r.ox + x;
      const float* gp = g_acc + pix * D;
      float dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += gp[d] * acc[pix * D + d];
      for (int64_t d = 0; d < D; ++d) G[d * V + v][l] = gp[d];
      T[v][l] = 1;
      gF[v][l] = dot;
      gATf[v][l] = g_alpha[pix] * trans[pix];
    }
  int64_t alive = r.pw * r.ph;
  for (int64_t j = 0; j < n && alive > 0; ++j) {
    const Splat<float>& s = splats[list[j]];
    const float* f = feats + list[j] * D;
    const Span sp = splat_span(s, r);
    if (sp.x1 <= sp.x0) continue;
    vf gm0 = kZero, gm1 = kZero, gc0 = kZero, gc1 = kZero, gc2 = kZero, go = kZero;
    bool touched = false;
    std::fill(gfeat, gfeat + D, kZero);
    for (int64_t y = sp.y0; y < sp.y1; ++y)
      for (int64_t c = sp.x0 / kLanes; c <= (sp.x1 - 1) / kLanes; ++c) {
        const int64_t v = y * K + c;
        const RowAlpha ra = row_alpha(s, r, sp, y, c, T[v]);
        if (!any(ra.hit)) continue;
        if (any(ra.stop))
          for (int l = 0; l < kLanes; ++l) alive -= ra.stop[l] != 0;
        if (any(ra.comp)) {
          touched = true;
          const vf w = ra.comp ? ra.alpha * T[v] : kZero;
          vf gc = kZero;
          for (int64_t d = 0; d < D; ++d) gc += G[d * V + v] * f[d];
          for (int64_t d = 0; d < D; ++d) gfeat[d] += w * G[d * V + v];
          cum[v] = ra.comp ? cum[v] + w * gc : cum[v];
          const vi ok = ra.comp & ra.unclamped;
          const vf d_alpha = T[v] * gc - ((gF[v] - cum[v]) - gATf[v]) / (1.0f - (ra.comp ? ra.alpha : kZero));
          const vf d_power = -d_alpha * ra.alpha;
          const float dy = ra.dy;
          gm0 += ok ? d_power * (s.a * ra.dx + s.b * dy) : kZero;
          gm1 += ok ? d_power * (s.b * ra.dx + s.c * dy) : kZero;
          gc0 += ok ? d_power * 0.5f * ra.dx * ra.dx : kZero;
          gc1 += ok ? d_power * ra.dx * dy : kZero;
          gc2 += ok ? d_power * 0.5f * dy * dy : kZero;
          go += ok ? d_alpha * ra.e : kZero;
        }
        T[v] = ra.stop ? kZero : (ra.comp ? ra.tn : T[v]);
      }
    if (!touched) continue;
    float* o = out + list[j] * stride;
    o[0] += hsum(gm0);
    o[1] += hsum(gm1);
    o[2] += hsum(gc0);
    o[3] += hsum(gc1);
    o[4] += hsum(gc2);
    o[5] += hsum(go);
    for (int64_t d = 0; d < D; ++d) o[6 + d] += hsum(gfeat[d]);
  }
}

void backward_simd(const Splat<float>* splats, const float* feats, int64_t D, const int64_t* ids,
                   const int64_t* start, const int64_t* count, int64_t n_tiles, const Tiling& t, const float* acc,
                   const float* trans, const float* g_acc, const float* g_alpha, const int64_t* work, float* buf,
                   int64_t M, int threads) {
  const std::vector<int64_t> tiles = active_tiles(count, n_tiles);
  const std::vector<int64_t> before = work_before(tiles, work);
  const TileVectors tv(t.ts);
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    for (int b = tid; b < threads; b += nt)  // each thread zeroes its own buffer (and any a missing thread leaves)
      std::fill(buf + b * M * (6 + D), buf + (b + 1) * M * (6 + D), 0.0f);
    Scratch T(tv.V), gF(tv.V), gATf(tv.V), cum(tv.V), G(tv.V * D), gfeat(D);
    const auto [first, last] = thread_run(before, tid, nt);
    for (size_t k = first; k < last; ++k)
      backward_tile(splats, feats, D, ids + start[tiles[k]], count[tiles[k]], tile_rect(tiles[k], t), t, tv, acc,
                    trans, g_acc, g_alpha, T.p, gF.p, gATf.p, cum.p, G.p, gfeat.p,
                    buf + static_cast<int64_t>(tid) * M * (6 + D));
  }
}

Tiling make_tiling(int64_t ts, int64_t tiles_x, int64_t tiles_y, int64_t width, int64_t height) {
  return Tiling{ts, tiles_x, tiles_y, width, height};
}

void check_floats(std::initializer_list<const torch::Tensor*> xs) {
  for (const auto* x : xs)
    TORCH_CHECK(x->device().is_cpu() && x->is_contiguous() && x->scalar_type() == (*xs.begin())->scalar_type(),
                "composite_cpu: float inputs must be contiguous CPU tensors of one dtype");
}

void check_lists(const torch::Tensor& ids, const torch::Tensor& start, const torch::Tensor& count) {
  for (const auto* x : {&ids, &start, &count})
    TORCH_CHECK(x->device().is_cpu() && x->is_contiguous() && x->scalar_type() == torch::kInt64,
                "composite_cpu: tile lists must be contiguous int64 CPU tensors");
}

}  // namespace

// -> (acc [C,H,W,D], T_final [C,H,W], work per tile [T] (pixel visits, for the backward's schedule),
//     splats (the per-Gaussian constants, opaque bytes for the backward))
std::vector<torch::Tensor> composite_forward(torch::Tensor means, torch::Tensor conics, torch::Tensor opac,
                                             torch::Tensor feats, torch::Tensor ids, torch::Tensor start,
                                             torch::Tensor count, int64_t ts, int64_t tiles_x, int64_t tiles_y,
                                             int64_t n_images, int64_t width, int64_t height) {
  check_floats({&means, &conics, &opac, &feats});
  check_lists(ids, start, count);
  const int64_t M = feats.size(0), D = feats.size(1);
  auto acc = torch::zeros({n_images, height, width, D}, feats.options());
  auto trans = torch::ones({n_images, height, width}, feats.options());
  auto work = torch::zeros_like(count);
  torch::Tensor splats;
  const Tiling t = make_tiling(ts, tiles_x, tiles_y, width, height);
  AT_DISPATCH_FLOATING_TYPES(feats.scalar_type(), "composite_forward", [&] {
    splats = torch::empty({M * static_cast<int64_t>(sizeof(Splat<scalar_t>))}, torch::kUInt8);
    auto* sp = reinterpret_cast<Splat<scalar_t>*>(splats.data_ptr<uint8_t>());
    make_splats<scalar_t>(M, means.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(), opac.data_ptr<scalar_t>(), sp);
    auto kernel = [] {
      if constexpr (std::is_same_v<scalar_t, float>) return forward_simd;
      else return forward_scalar<scalar_t>;
    }();
    kernel(sp, feats.data_ptr<scalar_t>(), D, ids.data_ptr<int64_t>(), start.data_ptr<int64_t>(),
           count.data_ptr<int64_t>(), count.numel(), t, acc.data_ptr<scalar_t>(), trans.data_ptr<scalar_t>(),
           work.data_ptr<int64_t>(), at::get_num_threads());
  });
  return {acc, trans, work, splats};
}

// -> (d means [M,2], d conics [M,3], d opacities [M], d feats [M,D]); `splats` and `work` from the forward.
std::vector<torch::Tensor> composite_backward(torch::Tensor feats, torch::Tensor ids, torch::Tensor start,
                                              torch::Tensor count, int64_t ts, int64_t tiles_x, int64_t tiles_y,
                                              int64_t width, int64_t height, torch::Tensor acc,
                                              torch::Tensor trans, torch::Tensor work, torch::Tensor splats,
                                              torch::Tensor g_acc, torch::Tensor g_alpha) {
  check_floats({&feats});
  check_lists(ids, start, count);
  const int64_t M = feats.size(0), D = feats.size(1), stride = 6 + D;
  TORCH_CHECK(work.is_contiguous() && work.scalar_type() == torch::kInt64 && work.numel() == count.numel(),
              "composite_cpu: work must be the forward's int64 work per tile");
  for (const auto* x : {&acc, &trans, &g_acc, &g_alpha})
    TORCH_CHECK(x->is_contiguous() && x->scalar_type() == feats.scalar_type(),
                "composite_cpu: image tensors must be contiguous and of the features' dtype");
  const int threads = at::get_num_threads();
  auto buf = torch::empty({threads, M, stride}, feats.options());  // zeroed by the kernel's threads
  auto g_means = torch::empty({M, 2}, feats.options()), g_conics = torch::empty({M, 3}, feats.options());
  auto g_opac = torch::empty({M}, feats.options()), g_feats = torch::empty({M, D}, feats.options());
  const Tiling t = make_tiling(ts, tiles_x, tiles_y, width, height);
  AT_DISPATCH_FLOATING_TYPES(feats.scalar_type(), "composite_backward", [&] {
    TORCH_CHECK(splats.is_contiguous() && splats.numel() == M * static_cast<int64_t>(sizeof(Splat<scalar_t>)),
                "composite_cpu: splats must be the forward's");
    auto kernel = [] {
      if constexpr (std::is_same_v<scalar_t, float>) return backward_simd;
      else return backward_scalar<scalar_t>;
    }();
    scalar_t* b = buf.data_ptr<scalar_t>();
    kernel(reinterpret_cast<const Splat<scalar_t>*>(splats.data_ptr<uint8_t>()), feats.data_ptr<scalar_t>(), D,
           ids.data_ptr<int64_t>(), start.data_ptr<int64_t>(), count.data_ptr<int64_t>(), count.numel(), t,
           acc.data_ptr<scalar_t>(), trans.data_ptr<scalar_t>(), g_acc.data_ptr<scalar_t>(),
           g_alpha.data_ptr<scalar_t>(), work.data_ptr<int64_t>(), b, M, threads);
    // The threads' buffers summed in thread order, straight into the four gradients.
    scalar_t *gm = g_means.data_ptr<scalar_t>(), *gc = g_conics.data_ptr<scalar_t>();
    scalar_t *go = g_opac.data_ptr<scalar_t>(), *gf = g_feats.data_ptr<scalar_t>();
    at::parallel_for(0, M, 1024, [&](int64_t lo, int64_t hi) {
      std::vector<scalar_t> sum(stride);
      for (int64_t i = lo; i < hi; ++i) {
        std::copy(b + i * stride, b + (i + 1) * stride, sum.begin());
        for (int k = 1; k < threads; ++k)
          for (int64_t c = 0; c < stride; ++c) sum[c] += b[(k * M + i) * stride + c];
        std::copy(sum.begin(), sum.begin() + 2, gm + 2 * i);
        std::copy(sum.begin() + 2, sum.begin() + 5, gc + 3 * i);
        go[i] = sum[5];
        std::copy(sum.begin() + 6, sum.end(), gf + i * D);
      }
    });
  });
  return {g_means, g_conics, g_opac, g_feats};
}

namespace {

template <typename scalar_t>
void tile_rects(const scalar_t* means, const scalar_t* extent, int64_t M, int64_t ts, int64_t tiles_x,
                int64_t tiles_y, int64_t* rect) {
  const scalar_t size = static_cast<scalar_t>(ts);
  auto clamp = [](scalar_t v, int64_t n) {
    return static_cast<int64_t>(std::min(std::max(v, scalar_t(0)), static_cast<scalar_t>(n)));
  };
  for (int64_t i = 0; i < M; ++i) {
    const scalar_t mx = means[2 * i], my = means[2 * i + 1], ex = extent[2 * i], ey = extent[2 * i + 1];
    int64_t* r = rect + 4 * i;
    r[0] = clamp(std::floor((mx - ex) / size), tiles_x);
    r[1] = clamp(std::ceil((mx + ex) / size), tiles_x);
    r[2] = clamp(std::floor((my - ey) / size), tiles_y);
    r[3] = clamp(std::ceil((my + ey) / size), tiles_y);
    if (!(ex > 0 && ey > 0)) r[1] = r[0];  // invisible: an empty rectangle
  }
}


// Order-preserving unsigned keys of floats (negative zero as zero; NaN after +inf, as torch sorts them).
inline uint32_t sort_key(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  if (v != v) return ~uint32_t(0);
  if (v == 0) b = 0;
  return b ^ ((b >> 31) ? 0xFFFFFFFFu : 0x80000000u);
}
inline uint64_t sort_key(double v) {
  uint64_t b;
  std::memcpy(&b, &v, sizeof b);
  if (v != v) return ~uint64_t(0);
  if (v == 0) b = 0;
  return b ^ ((b >> 63) ? ~uint64_t(0) : (uint64_t(1) << 63));
}

// `ids` stably sorted by the keys of `depths`: an LSD radix sort whose passes skip a digit that every key shares.
// float32 packs (key, position) into one 64-bit item and sorts 11 key bits a pass (3 passes, one array moved);
// float64 sorts its 64-bit keys 8 bits a pass beside the ids.
template <typename scalar_t>
std::vector<int64_t> depth_order(const scalar_t* depths, std::vector<int64_t> ids) {
  using key_t = decltype(sort_key(scalar_t(0)));
  const size_t n = ids.size();
  if constexpr (sizeof(key_t) == 4) {
    std::vector<uint64_t> a(n), b(n);
    for (size_t i = 0; i < n; ++i) a[i] = (uint64_t(sort_key(depths[ids[i]])) << 32) | static_cast<uint32_t>(i);
    for (int shift = 32; shift < 64; shift += 11) {
      const uint64_t mask = (uint64_t(1) << std::min(11, 64 - shift)) - 1;
      std::vector<size_t> hist(mask + 2, 0);
      for (size_t i = 0; i < n; ++i) ++hist[((a[i] >> shift) & mask) + 1];
      if (n == 0 || hist[((a[0] >> shift) & mask) + 1] == n) continue;  // one digit: order unchanged
      for (uint64_t d = 0; d <= mask; ++d) hist[d + 1] += hist[d];
      for (size_t i = 0; i < n; ++i) b[hist[(a[i] >> shift) & mask]++] = a[i];
      a.swap(b);
    }
    std::vector<int64_t> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = ids[static_cast<uint32_t>(a[i])];
    return out;
  } else {
    std::vector<key_t> keys(n), keys2(n);
    for (size_t i = 0; i < n; ++i) keys[i] = sort_key(depths[ids[i]]);
    std::vector<int64_t> ids2(n);
    for (int shift = 0; shift < static_cast<int>(8 * sizeof(key_t)); shift += 8) {
      size_t hist[257] = {0};
      for (size_t i = 0; i < n; ++i) ++hist[((keys[i] >> shift) & 0xFF) + 1];
      if (n == 0 || hist[((keys[0] >> shift) & 0xFF) + 1] == n) continue;
      for (int d = 0; d < 256; ++d) hist[d + 1] += hist[d];
      for (size_t i = 0; i < n; ++i) {
        const size_t at = hist[(keys[i] >> shift) & 0xFF]++;
        keys2[at] = keys[i];
        ids2[at] = ids[i];
      }
      keys.swap(keys2);
      ids.swap(ids2);
    }
    return ids;
  }
}

}  // namespace

// tiles.screen_extent: per Gaussian and image axis, the smaller of the radius and the exact half-width of the
// ellipse where opacity exp(-power) >= 1/255; 0 for a Gaussian that is culled or never reaches 1/255.
// radii [M,2] int32, cov2d [M,3] (a, b, c of the 2D covariance), opacities [M] -> [M,2]
torch::Tensor screen_extent(torch::Tensor radii, torch::Tensor cov2d, torch::Tensor opac) {
  TORCH_CHECK(radii.is_contiguous() && cov2d.is_contiguous() && opac.is_contiguous() &&
                  radii.scalar_type() == torch::kInt32 && opac.scalar_type() == cov2d.scalar_type(),
              "screen_extent: contiguous int32 radii, and cov2d and opacities of one dtype");
  const int64_t M = opac.numel();
  auto out = torch::empty({M, 2}, cov2d.options());
  const int32_t* rad = radii.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES(cov2d.scalar_type(), "screen_extent", [&] {
    const scalar_t *cov = cov2d.data_ptr<scalar_t>(), *op = opac.data_ptr<scalar_t>();
    scalar_t* ext = out.data_ptr<scalar_t>();
    at::parallel_for(0, M, 4096, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const scalar_t level = std::log(std::max(static_cast<scalar_t>(255.0) * op[i], static_cast<scalar_t>(1e-12)));
        for (int axis = 0; axis < 2; ++axis) {
          const scalar_t exact = std::sqrt(std::max(2 * level, scalar_t(0)) * cov[3 * i + 2 * axis]) *
                                     static_cast<scalar_t>(1.0001) + static_cast<scalar_t>(1e-3);
          const scalar_t r = static_cast<scalar_t>(rad[2 * i + axis]);
          const scalar_t e = std::isnan(exact) ? exact : std::min(r, exact);  // NaN as torch.minimum
          ext[2 * i + axis] = (level > 0 && rad[2 * i + axis] > 0) ? e : scalar_t(0);
        }
      }
    });
  });
  return out;
}

// Tile lists of TileBins: every (tile, Gaussian) overlap, each tile's run front to back (a stable sort of
// `depths`). means / extent [M,2], depths [M], flat over (image, Gaussian) with N per image;
// -> (pair_ids, tile_start, tile_count)
std::vector<torch::Tensor> bin_tiles(torch::Tensor means, torch::Tensor extent, torch::Tensor depths, int64_t n,
                                     int64_t ts, int64_t tiles_x, int64_t tiles_y, int64_t n_images) {
  TORCH_CHECK(means.is_contiguous() && extent.is_contiguous() && depths.is_contiguous() &&
                  extent.scalar_type() == means.scalar_type() && depths.scalar_type() == means.scalar_type(),
              "bin_tiles: contiguous means, extent and depths of one dtype");
  const int64_t M = means.size(0), per = tiles_x * tiles_y;
  auto rect = torch::empty({M, 4}, torch::kInt64);
  int64_t* r = rect.data_ptr<int64_t>();
  std::vector<int64_t> order;
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "bin_tiles", [&] {
    tile_rects<scalar_t>(means.data_ptr<scalar_t>(), extent.data_ptr<scalar_t>(), M, ts, tiles_x, tiles_y, r);
    std::vector<int64_t> visible;
    for (int64_t i = 0; i < M; ++i)
      if (r[4 * i + 1] > r[4 * i] && r[4 * i + 3] > r[4 * i + 2]) visible.push_back(i);
    order = depth_order(depths.data_ptr<scalar_t>(), std::move(visible));
  });
  auto count = torch::zeros({n_images * per}, torch::kInt64);
  int64_t* c = count.data_ptr<int64_t>();
  for (const int64_t i : order) {
    const int64_t* q = r + 4 * i;
    const int64_t base = (i / n) * per;
    for (int64_t ty = q[2]; ty < q[3]; ++ty)
      for (int64_t tx = q[0]; tx < q[1]; ++tx) ++c[base + ty * tiles_x + tx];
  }
  auto start = count.cumsum(0) - count;
  auto cursor = start.clone();
  int64_t* cur = cursor.data_ptr<int64_t>();
  auto ids = torch::empty({count.sum().item<int64_t>()}, torch::kInt64);
  int64_t* out = ids.data_ptr<int64_t>();
  for (const int64_t i : order) {
    const int64_t base = (i / n) * per;
    const int64_t* q = r + 4 * i;
    for (int64_t ty = q[2]; ty < q[3]; ++ty)
      for (int64_t tx = q[0]; tx < q[1]; ++tx) out[cur[base + ty * tiles_x + tx]++] = i;
  }
  return {ids, start, count};
}
