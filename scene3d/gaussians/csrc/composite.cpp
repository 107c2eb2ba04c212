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

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
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

template <typename scalar_t>
struct Splat {
  scalar_t mx, my, a, b, c, op, level;  // level: power above which alpha < 1/255 for sure
};

template <typename scalar_t>
Splat<scalar_t> load_splat(int64_t id, const scalar_t* means, const scalar_t* conics, const scalar_t* opac) {
  Splat<scalar_t> s{means[2 * id], means[2 * id + 1], conics[3 * id], conics[3 * id + 1], conics[3 * id + 2],
                    opac[id], 0};
  s.level = std::log(std::max(static_cast<scalar_t>(255.0) * s.op, static_cast<scalar_t>(1e-30))) +
            static_cast<scalar_t>(1e-3);
  return s;
}

// Pixels of tile r that splat s can reach, [x0, x1) x [y0, y1) in tile coordinates: the box of the ellipse
// power <= level (half-widths sqrt(2 level Sigma_xx), Sigma = conic^-1) widened by a pixel; the whole tile
// if the conic is degenerate. Pixels outside it would skip s anyway (alpha < 1/255).
struct Span {
  int64_t x0, x1, y0, y1;
};

template <typename scalar_t>
Span splat_span(const Splat<scalar_t>& s, const TileRect& r) {
  const double det = static_cast<double>(s.a) * s.c - static_cast<double>(s.b) * s.b;
  if (!(det > 0) || !(s.level > 0)) return Span{0, s.level > 0 ? r.pw : 0, 0, r.ph};
  const double hx = std::sqrt(2.0 * s.level * s.c / det), hy = std::sqrt(2.0 * s.level * s.a / det);
  auto lo = [](double v, int64_t n) { return std::clamp<int64_t>(static_cast<int64_t>(std::floor(v)), 0, n); };
  auto hi = [](double v, int64_t n) { return std::clamp<int64_t>(static_cast<int64_t>(std::ceil(v)) + 1, 0, n); };
  const double cx = s.mx - r.ox - 0.5, cy = s.my - r.oy - 0.5;  // mean in tile pixel-index coordinates
  if (!std::isfinite(hx) || !std::isfinite(hy)) return Span{0, r.pw, 0, r.ph};
  return Span{lo(cx - hx - 1, r.pw), hi(cx + hx, r.pw), lo(cy - hy - 1, r.ph), hi(cy + hy, r.ph)};
}

std::vector<int64_t> active_tiles(const int64_t* count, int64_t n_tiles) {
  std::vector<int64_t> out;
  for (int64_t t = 0; t < n_tiles; ++t)
    if (count[t] > 0) out.push_back(t);
  return out;
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
void forward_kernel(const scalar_t* means, const scalar_t* conics, const scalar_t* opac, const scalar_t* feats,
                    int64_t D, const int64_t* ids, const int64_t* start, const int64_t* count, int64_t n_tiles,
                    const Tiling& t, scalar_t* acc, scalar_t* trans, int64_t* work, int threads) {
  const std::vector<int64_t> tiles = active_tiles(count, n_tiles);
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
        const Splat<scalar_t> s = load_splat(list[j], means, conics, opac);
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
void backward_kernel(const scalar_t* means, const scalar_t* conics, const scalar_t* opac, const scalar_t* feats,
                     int64_t D, const int64_t* ids, const int64_t* start, const int64_t* count, int64_t n_tiles,
                     const Tiling& t, const scalar_t* acc, const scalar_t* trans, const scalar_t* g_acc,
                     const scalar_t* g_alpha, const int64_t* work, scalar_t* buf, int64_t M, int threads) {
  const std::vector<int64_t> tiles = active_tiles(count, n_tiles);
  const scalar_t t_min = static_cast<scalar_t>(1e-4);
  const int64_t stride = 6 + D;  // per Gaussian: means (2), conics (3), opacity, features (D)
  std::vector<int64_t> before(tiles.size() + 1, 0);  // forward work of the tiles before each
  for (size_t k = 0; k < tiles.size(); ++k) before[k + 1] = before[k] + std::max<int64_t>(work[tiles[k]], 1);
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    scalar_t* out = buf + static_cast<int64_t>(tid) * M * stride;
    const int64_t Pmax = t.ts * t.ts;
    std::vector<scalar_t> T(Pmax), gF(Pmax), gATf(Pmax), cum(Pmax), gfeat(D);
    std::vector<const scalar_t*> gp(Pmax);
    // A contiguous run of tiles holding 1/nt of the forward's work: balanced and deterministic.
    auto owner = [&](size_t k) {
      return std::min<int64_t>(nt - 1, (before[k] + before[k + 1]) * nt / (2 * before.back()));
    };
    const size_t n = tiles.size();
    size_t first = 0;
    while (first < n && owner(first) < tid) ++first;
    for (size_t k = first; k < n && owner(k) == tid; ++k) {
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
        const Splat<scalar_t> s = load_splat(list[j], means, conics, opac);
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

Tiling make_tiling(int64_t ts, int64_t tiles_x, int64_t tiles_y, int64_t width, int64_t height) {
  return Tiling{ts, tiles_x, tiles_y, width, height};
}

void check_inputs(const torch::Tensor& means, const torch::Tensor& conics, const torch::Tensor& opac,
                  const torch::Tensor& feats, const torch::Tensor& ids, const torch::Tensor& start,
                  const torch::Tensor& count) {
  for (const auto* x : {&means, &conics, &opac, &feats})
    TORCH_CHECK(x->device().is_cpu() && x->is_contiguous() && x->scalar_type() == means.scalar_type(),
                "composite_cpu: float inputs must be contiguous CPU tensors of one dtype");
  for (const auto* x : {&ids, &start, &count})
    TORCH_CHECK(x->device().is_cpu() && x->is_contiguous() && x->scalar_type() == torch::kInt64,
                "composite_cpu: tile lists must be contiguous int64 CPU tensors");
}

}  // namespace

// -> (acc [C,H,W,D], T_final [C,H,W], work per tile [T] (pixel visits, for the backward's schedule))
std::vector<torch::Tensor> composite_forward(torch::Tensor means, torch::Tensor conics, torch::Tensor opac,
                                             torch::Tensor feats, torch::Tensor ids, torch::Tensor start,
                                             torch::Tensor count, int64_t ts, int64_t tiles_x, int64_t tiles_y,
                                             int64_t n_images, int64_t width, int64_t height) {
  check_inputs(means, conics, opac, feats, ids, start, count);
  const int64_t D = feats.size(1);
  auto acc = torch::zeros({n_images, height, width, D}, feats.options());
  auto trans = torch::ones({n_images, height, width}, feats.options());
  auto work = torch::zeros_like(count);
  const Tiling t = make_tiling(ts, tiles_x, tiles_y, width, height);
  AT_DISPATCH_FLOATING_TYPES(feats.scalar_type(), "composite_forward", [&] {
    forward_kernel<scalar_t>(means.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(), opac.data_ptr<scalar_t>(),
                             feats.data_ptr<scalar_t>(), D, ids.data_ptr<int64_t>(), start.data_ptr<int64_t>(),
                             count.data_ptr<int64_t>(), count.numel(), t, acc.data_ptr<scalar_t>(),
                             trans.data_ptr<scalar_t>(), work.data_ptr<int64_t>(), at::get_num_threads());
  });
  return {acc, trans, work};
}

// -> (d means [M,2], d conics [M,3], d opacities [M], d feats [M,D])
std::vector<torch::Tensor> composite_backward(torch::Tensor means, torch::Tensor conics, torch::Tensor opac,
                                              torch::Tensor feats, torch::Tensor ids, torch::Tensor start,
                                              torch::Tensor count, int64_t ts, int64_t tiles_x, int64_t tiles_y,
                                              int64_t width, int64_t height, torch::Tensor acc,
                                              torch::Tensor trans, torch::Tensor work, torch::Tensor g_acc,
                                              torch::Tensor g_alpha) {
  check_inputs(means, conics, opac, feats, ids, start, count);
  TORCH_CHECK(work.is_contiguous() && work.scalar_type() == torch::kInt64 && work.numel() == count.numel(),
              "composite_cpu: work must be the forward's int64 work per tile");
  for (const auto* x : {&acc, &trans, &g_acc, &g_alpha})
    TORCH_CHECK(x->is_contiguous() && x->scalar_type() == feats.scalar_type(),
                "composite_cpu: image tensors must be contiguous and of the features' dtype");
  const int64_t M = feats.size(0), D = feats.size(1);
  const int threads = at::get_num_threads();
  auto buf = torch::zeros({threads, M, 6 + D}, feats.options());
  const Tiling t = make_tiling(ts, tiles_x, tiles_y, width, height);
  AT_DISPATCH_FLOATING_TYPES(feats.scalar_type(), "composite_backward", [&] {
    backward_kernel<scalar_t>(means.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(), opac.data_ptr<scalar_t>(),
                              feats.data_ptr<scalar_t>(), D, ids.data_ptr<int64_t>(), start.data_ptr<int64_t>(),
                              count.data_ptr<int64_t>(), count.numel(), t, acc.data_ptr<scalar_t>(),
                              trans.data_ptr<scalar_t>(), g_acc.data_ptr<scalar_t>(), g_alpha.data_ptr<scalar_t>(),
                              work.data_ptr<int64_t>(), buf.data_ptr<scalar_t>(), M, threads);
  });
  auto g = threads == 1 ? buf[0] : buf.sum(0);
  return {g.slice(1, 0, 2).contiguous(), g.slice(1, 2, 5).contiguous(), g.select(1, 5).contiguous(),
          g.slice(1, 6, 6 + D).contiguous()};
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

// `ids` stably sorted by the keys of `depths` (LSD radix sort, 8 bits a pass; passes whose digit is the same
// for every key are skipped).
template <typename scalar_t>
std::vector<int64_t> depth_order(const scalar_t* depths, std::vector<int64_t> ids) {
  using key_t = decltype(sort_key(scalar_t(0)));
  const size_t n = ids.size();
  std::vector<key_t> keys(n), keys2(n);
  for (size_t i = 0; i < n; ++i) keys[i] = sort_key(depths[ids[i]]);
  std::vector<int64_t> ids2(n);
  for (int shift = 0; shift < static_cast<int>(8 * sizeof(key_t)); shift += 8) {
    size_t hist[257] = {0};
    for (size_t i = 0; i < n; ++i) ++hist[((keys[i] >> shift) & 0xFF) + 1];
    if (n == 0 || hist[((keys[0] >> shift) & 0xFF) + 1] == n) continue;  // one digit: order unchanged
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

}  // namespace

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
