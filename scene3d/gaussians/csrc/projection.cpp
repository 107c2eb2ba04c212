// EWA projection of 3D Gaussians into pinhole cameras on CPU (OpenMP over Gaussians), forward and backward.
// OpenMP directly rather than at::parallel_for: the compositing kernel's thread team stays the one that runs.
//
// Semantics of scene3d/gaussians/projection.py (the pure-torch reference, itself gsplat's fully_fused_projection):
//   Sigma = R(q / |q|) S S^T R^T,  p = W mu + t,  Sigma_c = W Sigma W^T,  z_safe = z inside (near, far) else 1,
//   J = [[fx/z, 0, -fx x_c/z^2], [0, fy/z, -fy y_c/z^2]] with x_c = z clamp(x/z, -lim_x-, lim_x+) (1.3x the fov),
//   cov2d = J Sigma_c J^T + eps2d I = (a, b, c),  conic = (c, -b, a) / max(ac - b^2, 1e-10),
//   means2d = (fx x/z + cx, fy y/z + cy),  radii = ceil(3.33 sqrt(a, c)), zero where culled,  depth = z.
// The backward is the exact derivative of those formulas, masks included (clamps pass gradient inside their
// range, as torch's do). Gradients of one Gaussian are summed over cameras by one thread in camera order:
// deterministic. Camera parameters get no gradient (the caller uses the torch path when they need one).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

template <typename T>
struct Camera {
  T W[9], t[3], fx, fy, cx, cy, lxn, lxp, lyn, lyp;
};

template <typename T>
std::vector<Camera<T>> load_cameras(const torch::Tensor& w2c, const torch::Tensor& K, int64_t width, int64_t height) {
  auto w = w2c.accessor<T, 3>();
  auto k = K.accessor<T, 3>();
  std::vector<Camera<T>> cams(w2c.size(0));
  for (int64_t c = 0; c < w2c.size(0); ++c) {
    Camera<T>& cam = cams[c];
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j) cam.W[3 * i + j] = w[c][i][j];
      cam.t[i] = w[c][i][3];
    }
    cam.fx = k[c][0][0], cam.fy = k[c][1][1], cam.cx = k[c][0][2], cam.cy = k[c][1][2];
    const T tan_x = T(0.5) * width / cam.fx, tan_y = T(0.5) * height / cam.fy;
    cam.lxp = (width - cam.cx) / cam.fx + T(0.3) * tan_x, cam.lxn = cam.cx / cam.fx + T(0.3) * tan_x;
    cam.lyp = (height - cam.cy) / cam.fy + T(0.3) * tan_y, cam.lyn = cam.cy / cam.fy + T(0.3) * tan_y;
  }
  return cams;
}

// Row-major 3x3 helpers.
template <typename T>
void matmul3(const T* A, const T* B, T* out) {
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) out[3 * i + j] = A[3 * i] * B[j] + A[3 * i + 1] * B[3 + j] + A[3 * i + 2] * B[6 + j];
}

template <typename T>
void matmul3_bt(const T* A, const T* B, T* out) {  // A B^T
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) out[3 * i + j] = A[3 * i] * B[3 * j] + A[3 * i + 1] * B[3 * j + 1] + A[3 * i + 2] * B[3 * j + 2];
}

template <typename T>
void matmul3_at(const T* A, const T* B, T* out) {  // A^T B
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) out[3 * i + j] = A[i] * B[j] + A[3 + i] * B[3 + j] + A[6 + i] * B[6 + j];
}

// Unit quaternion (w, x, y, z) and its rotation matrix; `norm` receives max(|q|, 1e-12) as F.normalize.
template <typename T>
void rotation(const T* quat, T* q, T* R, T& norm) {
  norm = std::max(std::sqrt(quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3]), T(1e-12));
  for (int i = 0; i < 4; ++i) q[i] = quat[i] / norm;
  const T w = q[0], x = q[1], y = q[2], z = q[3];
  const T r[9] = {1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                  2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                  2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)};
  std::copy(r, r + 9, R);
}

// World covariance Sigma = M M^T with M = R diag(s).
template <typename T>
void covariance(const T* R, const T* s, T* M, T* Sigma) {
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) M[3 * i + j] = R[3 * i + j] * s[j];
  matmul3_bt(M, M, Sigma);
}

// Everything the forward computes for one (camera, Gaussian) and the backward needs again.
template <typename T>
struct Proj {
  T p[3], z, u, v, xc, yc, Sc[9], J[6], a, b, c, det, ds;
  bool depth_ok, u_in, v_in;
};

template <typename T>
Proj<T> project_one(const Camera<T>& cam, const T* mean, const T* Sigma, T eps2d, T near, T far) {
  Proj<T> r;
  for (int i = 0; i < 3; ++i)
    r.p[i] = cam.W[3 * i] * mean[0] + cam.W[3 * i + 1] * mean[1] + cam.W[3 * i + 2] * mean[2] + cam.t[i];
  r.depth_ok = r.p[2] > near && r.p[2] < far;
  r.z = r.depth_ok ? r.p[2] : T(1);
  r.u = r.p[0] / r.z, r.v = r.p[1] / r.z;
  r.u_in = r.u >= -cam.lxn && r.u <= cam.lxp;
  r.v_in = r.v >= -cam.lyn && r.v <= cam.lyp;
  r.xc = r.z * std::min(std::max(r.u, -cam.lxn), cam.lxp);
  r.yc = r.z * std::min(std::max(r.v, -cam.lyn), cam.lyp);
  T WS[9];
  matmul3(cam.W, Sigma, WS);
  matmul3_bt(WS, cam.W, r.Sc);
  const T z2 = r.z * r.z;
  r.J[0] = cam.fx / r.z, r.J[1] = 0, r.J[2] = -cam.fx * r.xc / z2;
  r.J[3] = 0, r.J[4] = cam.fy / r.z, r.J[5] = -cam.fy * r.yc / z2;
  T JS[6];  // J Sigma_c [2,3]
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      JS[3 * i + j] = r.J[3 * i] * r.Sc[j] + r.J[3 * i + 1] * r.Sc[3 + j] + r.J[3 * i + 2] * r.Sc[6 + j];
  auto dot = [&](int i, int k) { return JS[3 * i] * r.J[3 * k] + JS[3 * i + 1] * r.J[3 * k + 1] + JS[3 * i + 2] * r.J[3 * k + 2]; };
  r.a = dot(0, 0) + eps2d;
  r.b = T(0.5) * (dot(0, 1) + dot(1, 0));
  r.c = dot(1, 1) + eps2d;
  r.det = r.a * r.c - r.b * r.b;
  r.ds = std::max(r.det, T(1e-10));
  return r;
}

template <typename T>
void forward_kernel(const T* means, const T* quats, const T* scales, const std::vector<Camera<T>>& cams, int64_t N,
                    int64_t width, int64_t height, T eps2d, T near, T far, T* means2d, T* conics, T* depths,
                    int32_t* radii, T* cov2d) {
  const int64_t C = cams.size();
  const int threads = at::get_num_threads();
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t n = 0; n < N; ++n) {
    {
      T q[4], R[9], M[9], Sigma[9], norm;
      rotation(quats + 4 * n, q, R, norm);
      covariance(R, scales + 3 * n, M, Sigma);
      for (int64_t ci = 0; ci < C; ++ci) {
        const Camera<T>& cam = cams[ci];
        const Proj<T> r = project_one(cam, means + 3 * n, Sigma, eps2d, near, far);
        const int64_t o = ci * N + n;
        const T mx = cam.fx * r.p[0] / r.z + cam.cx, my = cam.fy * r.p[1] / r.z + cam.cy;
        means2d[2 * o] = mx, means2d[2 * o + 1] = my;
        conics[3 * o] = r.c / r.ds, conics[3 * o + 1] = -r.b / r.ds, conics[3 * o + 2] = r.a / r.ds;
        depths[o] = r.p[2];
        cov2d[3 * o] = r.a, cov2d[3 * o + 1] = r.b, cov2d[3 * o + 2] = r.c;
        const T rx = std::ceil(T(3.33) * std::sqrt(std::max(r.a, T(0))));
        const T ry = std::ceil(T(3.33) * std::sqrt(std::max(r.c, T(0))));
        const bool inside = mx + rx > 0 && mx - rx < width && my + ry > 0 && my - ry < height;
        const bool keep = r.depth_ok && r.det > 0 && inside;
        radii[2 * o] = keep ? static_cast<int32_t>(rx) : 0;
        radii[2 * o + 1] = keep ? static_cast<int32_t>(ry) : 0;
      }
    }
  }
}

template <typename T>
void backward_kernel(const T* means, const T* quats, const T* scales, const std::vector<Camera<T>>& cams, int64_t N,
                     T eps2d, T near, T far, const T* g_means2d, const T* g_conics, const T* g_depths,
                     const T* g_cov2d, T* g_means, T* g_quats, T* g_scales) {
  const int64_t C = cams.size();
  const int threads = at::get_num_threads();
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t n = 0; n < N; ++n) {
    {
      T q[4], R[9], M[9], Sigma[9], norm;
      const T* s = scales + 3 * n;
      rotation(quats + 4 * n, q, R, norm);
      covariance(R, s, M, Sigma);
      T gSigma[9] = {0}, gmean[3] = {0};
      for (int64_t ci = 0; ci < C; ++ci) {
        const Camera<T>& cam = cams[ci];
        const Proj<T> r = project_one(cam, means + 3 * n, Sigma, eps2d, near, far);
        const int64_t o = ci * N + n;
        // conic = (c, -b, a) / ds and cov2d = (a, b, c) -> (ga, gb, gc)
        const T gA = g_conics[3 * o], gB = g_conics[3 * o + 1], gC = g_conics[3 * o + 2];
        const T gds = r.det >= T(1e-10) ? -(gA * r.c - gB * r.b + gC * r.a) / (r.ds * r.ds) : T(0);
        const T ga = gC / r.ds + gds * r.c + g_cov2d[3 * o];
        const T gb = -gB / r.ds - 2 * gds * r.b + g_cov2d[3 * o + 1];
        const T gc = gA / r.ds + gds * r.a + g_cov2d[3 * o + 2];
        const T G[4] = {ga, T(0.5) * gb, T(0.5) * gb, gc};  // dL/dcov2d [2,2]
        // cov2d = J Sc J^T: gJ = G J Sc^T + G^T J Sc, gSc = J^T G J
        T JS[6], JSt[6];
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 3; ++j) {
            JS[3 * i + j] = r.J[3 * i] * r.Sc[j] + r.J[3 * i + 1] * r.Sc[3 + j] + r.J[3 * i + 2] * r.Sc[6 + j];
            JSt[3 * i + j] = r.J[3 * i] * r.Sc[3 * j] + r.J[3 * i + 1] * r.Sc[3 * j + 1] + r.J[3 * i + 2] * r.Sc[3 * j + 2];
          }
        T gJ[6];
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 3; ++j)
            gJ[3 * i + j] = G[2 * i] * JSt[j] + G[2 * i + 1] * JSt[3 + j] + G[i] * JS[j] + G[2 + i] * JS[3 + j];
        T gSc[9];
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j)
            gSc[3 * i + j] = r.J[i] * (G[0] * r.J[j] + G[1] * r.J[3 + j]) + r.J[3 + i] * (G[2] * r.J[j] + G[3] * r.J[3 + j]);
        // Sc = W Sigma W^T: gSigma += W^T gSc W
        T tmp[9], gS[9];
        matmul3_at(cam.W, gSc, tmp);
        matmul3(tmp, cam.W, gS);
        for (int i = 0; i < 9; ++i) gSigma[i] += gS[i];
        // J(z, xc, yc)
        const T z = r.z, z2 = z * z, z3 = z2 * z;
        T gz = -cam.fx / z2 * gJ[0] + 2 * cam.fx * r.xc / z3 * gJ[2] - cam.fy / z2 * gJ[4] + 2 * cam.fy * r.yc / z3 * gJ[5];
        const T gxc = -cam.fx / z2 * gJ[2], gyc = -cam.fy / z2 * gJ[5];
        // xc = z clamp(x / z): through z and (inside the clamp) through u = x / z
        const T uc = std::min(std::max(r.u, -cam.lxn), cam.lxp), vc = std::min(std::max(r.v, -cam.lyn), cam.lyp);
        gz += gxc * uc + gyc * vc;
        T gx = 0, gy = 0;
        if (r.u_in) {
          gx += gxc;  // z * (1 / z)
          gz += -gxc * r.p[0] / z;
        }
        if (r.v_in) {
          gy += gyc;
          gz += -gyc * r.p[1] / z;
        }
        // means2d = (fx x / z + cx, fy y / z + cy)
        const T gmx = g_means2d[2 * o], gmy = g_means2d[2 * o + 1];
        gx += gmx * cam.fx / z;
        gy += gmy * cam.fy / z;
        gz += -(gmx * cam.fx * r.p[0] + gmy * cam.fy * r.p[1]) / z2;
        const T gp[3] = {gx, gy, (r.depth_ok ? gz : T(0)) + g_depths[o]};
        for (int j = 0; j < 3; ++j) gmean[j] += cam.W[j] * gp[0] + cam.W[3 + j] * gp[1] + cam.W[6 + j] * gp[2];
      }
      for (int j = 0; j < 3; ++j) g_means[3 * n + j] = gmean[j];
      // Sigma = M M^T: gM = (gSigma + gSigma^T) M; M = R diag(s)
      T gSym[9], gM[9];
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) gSym[3 * i + j] = gSigma[3 * i + j] + gSigma[3 * j + i];
      matmul3(gSym, M, gM);
      T gR[9];
      for (int j = 0; j < 3; ++j) {
        g_scales[3 * n + j] = gM[j] * R[j] + gM[3 + j] * R[3 + j] + gM[6 + j] * R[6 + j];
        for (int i = 0; i < 3; ++i) gR[3 * i + j] = gM[3 * i + j] * s[j];
      }
      // R(q) for the unit q, then q = quat / norm
      const T w = q[0], x = q[1], y = q[2], zq = q[3];
      T gq[4];
      gq[0] = 2 * (-zq * gR[1] + y * gR[2] + zq * gR[3] - x * gR[5] - y * gR[6] + x * gR[7]);
      gq[1] = 2 * (y * gR[1] + zq * gR[2] + y * gR[3] - 2 * x * gR[4] - w * gR[5] + zq * gR[6] + w * gR[7] - 2 * x * gR[8]);
      gq[2] = 2 * (-2 * y * gR[0] + x * gR[1] + w * gR[2] + x * gR[3] + zq * gR[5] - w * gR[6] + zq * gR[7] - 2 * y * gR[8]);
      gq[3] = 2 * (-2 * zq * gR[0] - w * gR[1] + x * gR[2] + w * gR[3] - 2 * zq * gR[4] + y * gR[5] + x * gR[6] + y * gR[7]);
      const T qdot = q[0] * gq[0] + q[1] * gq[1] + q[2] * gq[2] + q[3] * gq[3];
      const bool clamped = norm <= T(1e-12);
      for (int i = 0; i < 4; ++i) g_quats[4 * n + i] = clamped ? gq[i] / norm : (gq[i] - q[i] * qdot) / norm;
    }
  }
}

void check(const torch::Tensor& means, const torch::Tensor& quats, const torch::Tensor& scales,
           const torch::Tensor& w2c, const torch::Tensor& K) {
  for (const auto* x : {&means, &quats, &scales, &w2c, &K})
    TORCH_CHECK(x->device().is_cpu() && x->is_contiguous() && x->scalar_type() == means.scalar_type(),
                "project_cpu: contiguous CPU tensors of one floating dtype");
  const int64_t N = means.size(0);
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3 && quats.sizes() == torch::IntArrayRef({N, 4}) &&
                  scales.sizes() == torch::IntArrayRef({N, 3}),
              "project_cpu: means [N,3], quats [N,4], scales [N,3]");
  TORCH_CHECK(w2c.dim() == 3 && w2c.size(1) == 4 && w2c.size(2) == 4 && K.dim() == 3 && K.size(0) == w2c.size(0) &&
                  K.size(1) == 3 && K.size(2) == 3,
              "project_cpu: w2c [C,4,4], K [C,3,3]");
}

}  // namespace

// -> (means2d [C,N,2], conics [C,N,3], depths [C,N], radii [C,N,2] int32, cov2d [C,N,3])
std::vector<torch::Tensor> project_forward(torch::Tensor means, torch::Tensor quats, torch::Tensor scales,
                                           torch::Tensor w2c, torch::Tensor K, int64_t width, int64_t height,
                                           double eps2d, double near, double far) {
  check(means, quats, scales, w2c, K);
  const int64_t C = w2c.size(0), N = means.size(0);
  auto opts = means.options();
  auto means2d = torch::empty({C, N, 2}, opts), conics = torch::empty({C, N, 3}, opts);
  auto depths = torch::empty({C, N}, opts), cov2d = torch::empty({C, N, 3}, opts);
  auto radii = torch::empty({C, N, 2}, opts.dtype(torch::kInt32));
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_forward", [&] {
    const auto cams = load_cameras<scalar_t>(w2c, K, width, height);
    forward_kernel<scalar_t>(means.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(), scales.data_ptr<scalar_t>(), cams,
                             N, width, height, eps2d, near, far, means2d.data_ptr<scalar_t>(),
                             conics.data_ptr<scalar_t>(), depths.data_ptr<scalar_t>(), radii.data_ptr<int32_t>(),
                             cov2d.data_ptr<scalar_t>());
  });
  return {means2d, conics, depths, radii, cov2d};
}

// -> (d means [N,3], d quats [N,4], d scales [N,3])
std::vector<torch::Tensor> project_backward(torch::Tensor means, torch::Tensor quats, torch::Tensor scales,
                                            torch::Tensor w2c, torch::Tensor K, int64_t width, int64_t height,
                                            double eps2d, double near, double far, torch::Tensor g_means2d,
                                            torch::Tensor g_conics, torch::Tensor g_depths, torch::Tensor g_cov2d) {
  check(means, quats, scales, w2c, K);
  for (const auto* x : {&g_means2d, &g_conics, &g_depths, &g_cov2d})
    TORCH_CHECK(x->is_contiguous() && x->scalar_type() == means.scalar_type(),
                "project_cpu: gradients must be contiguous and of the means' dtype");
  const int64_t N = means.size(0);
  auto g_means = torch::empty_like(means), g_quats = torch::empty_like(quats), g_scales = torch::empty_like(scales);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_backward", [&] {
    const auto cams = load_cameras<scalar_t>(w2c, K, width, height);
    backward_kernel<scalar_t>(means.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(), scales.data_ptr<scalar_t>(),
                              cams, N, eps2d, near, far, g_means2d.data_ptr<scalar_t>(), g_conics.data_ptr<scalar_t>(),
                              g_depths.data_ptr<scalar_t>(), g_cov2d.data_ptr<scalar_t>(), g_means.data_ptr<scalar_t>(),
                              g_quats.data_ptr<scalar_t>(), g_scales.data_ptr<scalar_t>());
  });
  return {g_means, g_quats, g_scales};
}
