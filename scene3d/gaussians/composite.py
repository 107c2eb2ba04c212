"""Tiled front-to-back alpha compositing with a hand-written backward (pure torch, fast on CPU).

Semantics are those of the 3DGS / gsplat CUDA kernel, pixel centres at +0.5:
    power_i = 0.5 (a dx^2 + c dy^2) + b dx dy,   dx = mean_x - pixel_x, (a, b, c) the conic
    alpha_i = min(0.999, opacity_i exp(-power_i)); skipped if alpha_i < 1/255
    a Gaussian that would bring the transmittance to <= 1e-4 is not composited and stops the pixel.

Vectorisation: every tile's depth-sorted list is cut into chunks of K >= `chunk` Gaussians. Each
round processes the next chunk of all still-active tiles at once as [A tiles, K Gaussians, ts, ts
pixels] tensors (K grows when few tiles remain); inside a chunk the transmittance is a cumprod
of (1 - alpha), carried across rounds.
A tile retires when its list ends or all its pixels have stopped, so saturated tiles cost nothing.
The backward replays the rounds front to back (nothing per pair is stored) and uses the closed
form  dL/dalpha_i = T_i g.c_i - (g.S_i - g_A T_final) / (1 - alpha_i),  S_i = colour behind i.
"""

from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from scene3d.gaussians.tiles import ALPHA_MIN, TileBins

T_MIN = 1e-4
ALPHA_MAX = 0.999


def _initial_state(bins: TileBins, width: int, height: int, dtype: torch.dtype) -> dict[str, Tensor]:
    """Per active tile: id, origin, list range and the pixel state. `T` is the live transmittance
    (0 once a pixel has stopped, and for pixels outside the image); `T_final` the value it stopped at."""
    ts = bins.tile_size
    tiles = torch.nonzero(bins.tile_count > 0).squeeze(1)
    rem = tiles % (bins.tiles_x * bins.tiles_y)
    ox, oy = (rem % bins.tiles_x) * ts, torch.div(rem, bins.tiles_x, rounding_mode="floor") * ts
    local = torch.arange(ts, device=tiles.device)
    in_x = (ox[:, None] + local[None]) < width  # [A, ts]
    in_y = (oy[:, None] + local[None]) < height
    T = (in_y[:, :, None] & in_x[:, None, :]).to(dtype)  # [A, ts(y), ts(x)]
    return {"tile": tiles, "ox": ox.to(dtype), "oy": oy.to(dtype), "start": bins.tile_start[tiles],
            "count": bins.tile_count[tiles], "T": T, "T_final": torch.ones_like(T)}


def _chunk_weights(st: dict[str, Tensor], g: Tensor, valid: Tensor, means2d: Tensor, conics: Tensor,
                   log_opac: Tensor, local: Tensor) -> dict[str, Tensor]:
    """Alphas and compositing weights of one chunk of K Gaussians per tile: [A, K, ts(y), ts(x)]."""
    mean = means2d[g]
    dx = (mean[..., 0] - st["ox"][:, None])[..., None] - local  # [A, K, ts]: mean - pixel, along x
    dy = (mean[..., 1] - st["oy"][:, None])[..., None] - local  # along y
    ca, cb, cc = conics[g].unbind(-1)
    # log(opacity) - power; separable except for the cross term. Padding slots get log(0).
    lo = torch.where(valid, log_opac[g], -torch.inf)
    qx = (-0.5 * ca[..., None]) * dx * dx + lo[..., None]
    qy = (-0.5 * cc[..., None]) * dy * dy
    expo = (qy[..., :, None] + qx[..., None, :]).sub_((cb[..., None] * dy)[..., :, None] * dx[..., None, :])
    raw = torch.exp(expo)
    a_eff = torch.where(raw >= ALPHA_MIN, raw, 0.0).clamp_(max=ALPHA_MAX)  # skipped Gaussians: alpha 0
    one_m = 1.0 - a_eff
    t_incl = torch.cumprod(one_m, dim=1).mul_(st["T"][:, None])
    t_excl = t_incl / one_m
    # Weight T_i alpha_i, zero from the Gaussian that would bring T to <= 1e-4 on (the pixel stops).
    w = torch.where(t_incl > T_MIN, t_excl - t_incl, 0.0)
    return {"dx": dx, "dy": dy, "ca": ca, "cb": cb, "cc": cc, "raw": raw, "one_m": one_m, "t_excl": t_excl,
            "t_incl": t_incl, "w": w}


def _round_length(active_tiles: int, pixels: int, chunk: int, longest: int, target: int = 1 << 20) -> int:
    """Gaussians per tile this round: `chunk`, raised up to `longest` when few tiles remain (the long
    tail of crowded tiles) so a round stays near `target` pixel-Gaussian pairs. Depends only on the number
    of active tiles, so the backward replays exactly the forward's schedule."""
    return max(chunk, min(longest, target // max(active_tiles * pixels, 1)))


def _march(bins: TileBins, means2d: Tensor, conics: Tensor, opacities: Tensor, feats: Tensor,
           width: int, height: int, chunk: int, max_chunk: int, grads: dict[str, Tensor] | None = None):
    """The shared front-to-back loop. Forward (grads None) returns per-tile (acc [T,ts,ts,D], trans
    [T,ts,ts]); backward (grads: g_acc, g_alpha, acc, trans per tile) returns the input gradients."""
    ts, dt, dev = bins.tile_size, feats.dtype, feats.device
    n_feat = feats.shape[1]
    local = torch.arange(ts, dtype=dt, device=dev) + 0.5
    st = _initial_state(bins, width, height, dt)
    log_opac = torch.log(opacities)
    n_pairs = len(bins.pair_ids)
    if grads is None:
        acc_out = torch.zeros(bins.n_tiles, ts, ts, n_feat, dtype=dt, device=dev)
        trans_out = torch.ones(bins.n_tiles, ts, ts, dtype=dt, device=dev)
        st["acc"] = torch.zeros(*st["T"].shape, n_feat, dtype=dt, device=dev)
    else:
        out = {"means2d": torch.zeros_like(means2d), "conics": torch.zeros_like(conics),
               "opacities": torch.zeros_like(opacities), "feats": torch.zeros_like(feats)}
        t = st["tile"]
        st["g"] = rearrange(grads["g_acc"][t], "a y x d -> a (y x) d")
        st["gA_Tf"] = grads["g_alpha"][t] * grads["trans"][t]
        st["gF"] = (grads["g_acc"][t] * grads["acc"][t]).sum(-1)
        st["gP"] = torch.zeros_like(st["T"])
    done = 0  # every active tile has processed the same number of list entries
    while len(st["tile"]) > 0:
        k = _round_length(len(st["tile"]), ts * ts, chunk, max_chunk)
        pos = done + torch.arange(k, device=dev)
        valid = pos[None] < st["count"][:, None]  # [A, K]
        g = bins.pair_ids[(st["start"][:, None] + pos[None]).clamp(max=n_pairs - 1)]
        c = _chunk_weights(st, g, valid, means2d, conics, log_opac, local)
        w, f = c["w"], feats[g]  # [A, K, ts, ts], [A, K, D]
        w_flat = rearrange(w, "a k y x -> a k (y x)")
        if grads is None:
            st["acc"] += rearrange(torch.bmm(w_flat.transpose(1, 2), f), "a (y x) d -> a y x d", y=ts)
        else:
            _chunk_backward(st, c, g, f, opacities, out)
        T_next = st["T"] - w.sum(1)
        live = st["T"] > 0
        st["T_final"] = torch.where(live, T_next, st["T_final"])
        st["T"] = torch.where(c["t_incl"][:, -1] > T_MIN, T_next, 0.0)  # stopped pixels: T = 0
        done += k
        keep = (st["count"] > done) & (st["T"] > 0).flatten(1).any(1)
        if not bool(keep.all()):
            if grads is None:
                gone = st["tile"][~keep]
                acc_out[gone] = st["acc"][~keep]
                trans_out[gone] = st["T_final"][~keep]
            st = {k: v[keep] for k, v in st.items()}
    return (acc_out, trans_out) if grads is None else out


def _chunk_backward(st: dict[str, Tensor], c: dict[str, Tensor], g: Tensor, f: Tensor, opacities: Tensor,
                    out: dict[str, Tensor]) -> None:
    """Accumulate this chunk's gradients into `out` (index_add over the Gaussian ids `g`)."""
    ts = c["w"].shape[-1]
    w, raw, dx, dy = c["w"], c["raw"], c["dx"], c["dy"]
    gpix = st["g"]  # dL/d(accumulated features) [A, P, D]
    gc = rearrange(torch.bmm(f, gpix.transpose(1, 2)), "a k (y x) -> a k y x", y=ts)
    g_f = torch.bmm(rearrange(w, "a k y x -> a k (y x)"), gpix)  # [A, K, D]
    cum = torch.cumsum(w * gc, dim=1).add_(st["gP"][:, None])
    behind = st["gF"][:, None] - cum  # g . (features composited behind i)
    d_alpha = c["t_excl"] * gc - (behind - st["gA_Tf"][:, None]) / c["one_m"]
    d_alpha = torch.where((w > 0) & (raw < ALPHA_MAX), d_alpha, 0.0)
    d_raw = d_alpha * raw  # = dL/d(log opacity) = -dL/d(power), per pixel
    rows, cols = d_raw.sum(-1), d_raw.sum(-2)  # [A, K, ts(y)], [A, K, ts(x)]
    s_x, s_xx = (cols * dx).sum(-1), (cols * dx * dx).sum(-1)
    s_y, s_yy = (rows * dy).sum(-1), (rows * dy * dy).sum(-1)
    s_xy = (torch.einsum("akyx,akx->aky", d_raw, dx) * dy).sum(-1)
    ca, cb, cc = c["ca"], c["cb"], c["cc"]
    g_mean = -torch.stack([ca * s_x + cb * s_y, cb * s_x + cc * s_y], dim=-1)
    g_con = -torch.stack([0.5 * s_xx, s_xy, 0.5 * s_yy], dim=-1)
    flat = g.flatten()
    out["means2d"].index_add_(0, flat, g_mean.flatten(0, 1))
    out["conics"].index_add_(0, flat, g_con.flatten(0, 1))
    out["opacities"].index_add_(0, flat, (rows.sum(-1) / opacities[g]).flatten())
    out["feats"].index_add_(0, flat, g_f.flatten(0, 1))
    st["gP"] = cum[:, -1]


def _tiles_to_image(x: Tensor, bins: TileBins, width: int, height: int) -> Tensor:
    img = rearrange(x, "(c ty tx) y x ... -> c (ty y) (tx x) ...", ty=bins.tiles_y, tx=bins.tiles_x)
    return img[:, :height, :width]


def _image_to_tiles(img: Tensor, bins: TileBins) -> Tensor:
    ts = bins.tile_size
    pad_h, pad_w = bins.tiles_y * ts - img.shape[1], bins.tiles_x * ts - img.shape[2]
    if pad_h or pad_w:
        img = torch.nn.functional.pad(img.movedim((1, 2), (-2, -1)), (0, pad_w, 0, pad_h)).movedim((-2, -1), (1, 2))
    return rearrange(img, "c (ty y) (tx x) ... -> (c ty tx) y x ...", y=ts, x=ts)


class TiledComposite(torch.autograd.Function):
    """(means2d [M,2], conics [M,3], opacities [M], feats [M,D]) over flat ids image * N + gaussian
    -> (accumulated features [C,H,W,D], alpha [C,H,W]); background is added by the caller."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, feats, bins: TileBins, width: int, height: int, chunk: int,
                max_chunk: int):
        acc, trans = _march(bins, means2d, conics, opacities, feats, width, height, chunk, max_chunk)
        ctx.save_for_backward(means2d, conics, opacities, feats, acc, trans)
        ctx.cfg = (bins, width, height, chunk, max_chunk)
        return _tiles_to_image(acc, bins, width, height), _tiles_to_image(1.0 - trans, bins, width, height)

    @staticmethod
    def backward(ctx, g_acc, g_alpha):
        means2d, conics, opacities, feats, acc, trans = ctx.saved_tensors
        bins, width, height, chunk, max_chunk = ctx.cfg
        grads = {"g_acc": _image_to_tiles(g_acc.contiguous(), bins),
                 "g_alpha": _image_to_tiles(g_alpha.contiguous(), bins), "acc": acc, "trans": trans}
        out = _march(bins, means2d, conics, opacities, feats, width, height, chunk, max_chunk, grads)
        return out["means2d"], out["conics"], out["opacities"], out["feats"], None, None, None, None, None


def composite_tiled(means2d: Float[Tensor, "C N 2"], conics: Float[Tensor, "C N 3"],
                    opacities: Float[Tensor, "C N"], feats: Float[Tensor, "C N D"], bins: TileBins,
                    width: int, height: int, chunk: int = 32, max_chunk: int = 256) -> tuple[Tensor, Tensor]:
    """Accumulated features [C,H,W,D] and alpha [C,H,W] (no background) with the tiled kernel;
    `chunk` <= Gaussians per tile per round <= `max_chunk` (equal values fix the round length)."""
    return TiledComposite.apply(means2d.flatten(0, 1), conics.flatten(0, 1), opacities.flatten(0, 1),
                                feats.flatten(0, 1), bins, width, height, chunk, max_chunk)
