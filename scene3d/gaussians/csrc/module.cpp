// The Python module of the compiled CPU rasterizer: projection.cpp, composite.cpp (binning and compositing).

#include <torch/extension.h>

#include <vector>

std::vector<torch::Tensor> project_forward(torch::Tensor means, torch::Tensor quats, torch::Tensor scales,
                                           torch::Tensor w2c, torch::Tensor K, int64_t width, int64_t height,
                                           double eps2d, double near, double far);
std::vector<torch::Tensor> project_backward(torch::Tensor means, torch::Tensor quats, torch::Tensor scales,
                                            torch::Tensor w2c, torch::Tensor K, int64_t width, int64_t height,
                                            double eps2d, double near, double far, torch::Tensor g_means2d,
                                            torch::Tensor g_conics, torch::Tensor g_depths, torch::Tensor g_cov2d);
torch::Tensor screen_extent(torch::Tensor radii, torch::Tensor cov2d, torch::Tensor opac);
std::vector<torch::Tensor> bin_tiles(torch::Tensor means, torch::Tensor extent, torch::Tensor depths, int64_t n,
                                     int64_t ts, int64_t tiles_x, int64_t tiles_y, int64_t n_images);
std::vector<torch::Tensor> composite_forward(torch::Tensor means, torch::Tensor conics, torch::Tensor opac,
                                             torch::Tensor feats, torch::Tensor ids, torch::Tensor start,
                                             torch::Tensor count, int64_t ts, int64_t tiles_x, int64_t tiles_y,
                                             int64_t n_images, int64_t width, int64_t height);
std::vector<torch::Tensor> composite_backward(torch::Tensor feats, torch::Tensor ids, torch::Tensor start,
                                              torch::Tensor count, int64_t ts, int64_t tiles_x, int64_t tiles_y,
                                              int64_t width, int64_t height, torch::Tensor acc,
                                              torch::Tensor trans, torch::Tensor work, torch::Tensor splats,
                                              torch::Tensor g_acc, torch::Tensor g_alpha);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("project_forward", &project_forward, "EWA projection of 3D Gaussians forward (CPU)");
  m.def("project_backward", &project_backward, "EWA projection of 3D Gaussians backward (CPU)");
  m.def("screen_extent", &screen_extent, "screen half-extents of projected Gaussians (CPU)");
  m.def("bin_tiles", &bin_tiles, "tile lists of every (tile, Gaussian) overlap (CPU)");
  m.def("composite_forward", &composite_forward, "tiled compositing forward (CPU)");
  m.def("composite_backward", &composite_backward, "tiled compositing backward (CPU)");
}
