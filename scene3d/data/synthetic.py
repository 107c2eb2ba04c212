"""Procedural 3D worlds rendered exactly by analytic ray casting.

A world is a finite ground square at z = 0 (z up) with spheres, boxes, capped cylinders and tori
standing on it. Each primitive has a pose, a material (solid, checker, stripes or smooth noise,
evaluated as a solid texture in the primitive's local frame, so it is multi-view consistent) and a
semantic class given by its type. Shading is Lambertian diffuse + ambient under one directional
light, with an optional Blinn-Phong specular term (the only view-dependent part).

`render_world` intersects every pixel-centre ray with every primitive in closed form (torus: the
real roots of its quartic via companion-matrix eigenvalues, polished by Newton steps), so RGB,
depth, normals and labels are exact and agree across views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.config import Choice, Ordered, Range, check

CLASS_NAMES = ("background", "ground", "sphere", "box", "cylinder", "torus")
OBJECT_TYPES = ("sphere", "box", "cylinder", "torus")
MATERIALS = ("solid", "checker", "stripes", "noise")
MAX_OBJECTS = 64  # each is placed by rejection sampling and intersected by every ray
_NOISE_WAVES = 6
_NO_HIT = float("inf")


@dataclass
class WorldConfig:
    """How worlds are drawn. Sizes are in world units; the ground square is centred at the origin."""

    n_objects: Annotated[tuple[int, int], Range(0, MAX_OBJECTS), Ordered()] = (3, 5)  # inclusive range
    object_types: Annotated[tuple[str, ...], Choice(OBJECT_TYPES)] = OBJECT_TYPES
    materials: Annotated[tuple[str, ...], Choice(MATERIALS)] = MATERIALS
    placement_extent: Annotated[float, Range(0, 1e3)] = 0.9  # object centres lie in [-e, e]^2
    object_size: Annotated[tuple[float, float], Range(0, 1e3, above=True), Ordered()] = (0.22, 0.38)  # radius range
    ground_half_size: Annotated[float, Range(0, 1e3)] = 1.5
    ground_material: Annotated[str, Choice(MATERIALS)] = "checker"
    texture_frequency: Annotated[tuple[float, float], Range(0, 1e3), Ordered()] = (2.0, 5.0)  # cycles per unit
    ambient: Annotated[float, Range(0, 1)] = 0.35
    specular: Annotated[float, Range(0)] = 0.0  # Blinn-Phong strength; 0 makes the world Lambertian
    shininess: Annotated[float, Range(0, above=True)] = 32.0


@dataclass
class World:
    """Primitives as stacked tensors (P primitives, ground excluded) plus lighting.

    kind [P] index into OBJECT_TYPES; center [P,3]; rotation [P,3,3] local->world; params [P,3]
    (sphere: r; box: half extents; cylinder: radius, half height; torus: major R, minor r);
    material [P] index into MATERIALS; colors [P,2,3]; frequency [P]; waves [P,K,4] noise
    (direction*frequency, phase). Ground: a square of half side `ground_half_size` at z = 0.
    """

    kind: Tensor
    center: Tensor
    rotation: Tensor
    params: Tensor
    material: Tensor
    colors: Tensor
    frequency: Tensor
    waves: Tensor
    ground_half_size: float
    ground_material: int
    ground_colors: Tensor
    ground_frequency: float
    light_dir: Tensor
    ambient: float
    specular: float
    shininess: float
    seed: int = 0
    config: WorldConfig = field(default_factory=WorldConfig)

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def semantic(self) -> Tensor:
        """Semantic class per primitive: CLASS_NAMES index (ground is 1)."""
        return self.kind + 2

    @property
    def aabb(self) -> Float[Tensor, "2 3"]:
        """A box containing the ground and every object (used to bound fields and samplers)."""
        h = self.ground_half_size
        top = float((self.center[:, 2] + self.params.norm(dim=-1) * 1.5).max()) if len(self) else 1.0
        return torch.tensor([[-h, -h, -0.05], [h, h, max(top, 0.5) + 0.05]])

    def describe(self) -> list[dict]:
        return [{"type": OBJECT_TYPES[int(k)], "material": MATERIALS[int(m)],
                 "center": [round(float(c), 3) for c in ctr]}
                for k, m, ctr in zip(self.kind, self.material, self.center, strict=True)]


# world generation -----------------------------------------------------------------------------
def _random_rotation_z(angle: Tensor) -> Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    return rearrange(torch.stack([c, -s, zero, s, c, zero, zero, zero, one], -1), "... (i j) -> ... i j", i=3)


def _random_rotation_x(angle: Tensor) -> Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    return rearrange(torch.stack([one, zero, zero, zero, c, -s, zero, s, c], -1), "... (i j) -> ... i j", i=3)


def _palette_color(g: torch.Generator) -> Tensor:
    """A saturated, mid-bright colour (HSV with s, v in comfortable ranges)."""
    h, s, v = torch.rand(3, generator=g).tolist()
    s, v = 0.45 + 0.5 * s, 0.55 + 0.4 * v
    k = torch.tensor([5.0, 3.0, 1.0])
    rgb = v - v * s * torch.clamp(torch.minimum((k + h * 6) % 6, 4 - (k + h * 6) % 6), 0, 1)
    return rgb


def make_world(seed: int = 0, config: WorldConfig | None = None, object_types: list[str] | None = None) -> World:
    """Draw a world from `config`, reproducibly from `seed`.

    `object_types` fixes the list of object types (its length is the object count); otherwise the
    count and the types are drawn. Objects do not overlap (rejection on bounding circles).
    """
    config = config or WorldConfig()
    check(config)
    g = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    if object_types is None:
        n = int(torch.randint(config.n_objects[0], config.n_objects[1] + 1, (), generator=g))
        choice = torch.randint(len(config.object_types), (n,), generator=g)
        object_types = [config.object_types[int(i)] for i in choice]
    placed: list[tuple[float, float, float]] = []
    rows = []
    for name in object_types:
        size = uniform(*config.object_size)
        for _ in range(200):
            x, y = uniform(-1, 1) * config.placement_extent, uniform(-1, 1) * config.placement_extent
            if all(math.hypot(x - px, y - py) > size + pr + 0.05 for px, py, pr in placed):
                break
        placed.append((x, y, size))
        yaw = torch.tensor(uniform(0, 2 * math.pi))
        rot = _random_rotation_z(yaw)
        if name == "sphere":
            params, z = [size, 0.0, 0.0], size
        elif name == "box":
            half = [size * uniform(0.55, 0.75), size * uniform(0.55, 0.75), size * uniform(0.5, 0.9)]
            params, z = half, half[2]
        elif name == "cylinder":
            radius, half_h = size * uniform(0.5, 0.75), size * uniform(0.6, 1.0)
            params, z = [radius, half_h, 0.0], half_h
        elif name == "torus":
            minor = size * uniform(0.22, 0.32)
            major = size - minor
            # Lie flat or stand upright on the ground, touching it.
            if float(torch.rand((), generator=g)) < 0.5:
                params, z = [major, minor, 0.0], minor
            else:
                rot = rot @ _random_rotation_x(torch.tensor(math.pi / 2))
                params, z = [major, minor, 0.0], size
        else:
            raise ValueError(f"unknown object type '{name}'; choose from {OBJECT_TYPES}")
        material = int(torch.randint(len(config.materials), (), generator=g))
        freq = uniform(*config.texture_frequency)
        dirs = torch.nn.functional.normalize(torch.randn(_NOISE_WAVES, 3, generator=g), dim=-1)
        waves = torch.cat([dirs * freq * 2 * math.pi, torch.rand(_NOISE_WAVES, 1, generator=g) * 2 * math.pi], -1)
        rows.append(dict(kind=OBJECT_TYPES.index(name), center=[x, y, z], rotation=rot, params=params,
                         material=MATERIALS.index(config.materials[material]),
                         colors=torch.stack([_palette_color(g), _palette_color(g)]), frequency=freq, waves=waves))
    az, el = uniform(0, 2 * math.pi), uniform(math.radians(35), math.radians(70))
    light = torch.tensor([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    tint = 0.85 + 0.3 * torch.rand(1, 3, generator=g)
    ground_colors = torch.tensor([[0.82] * 3, [0.55] * 3]) * tint
    return World(
        kind=torch.tensor([r["kind"] for r in rows], dtype=torch.long),
        center=torch.tensor([r["center"] for r in rows], dtype=torch.float32).reshape(-1, 3),
        rotation=torch.stack([r["rotation"] for r in rows]) if rows else torch.zeros(0, 3, 3),
        params=torch.tensor([r["params"] for r in rows], dtype=torch.float32).reshape(-1, 3),
        material=torch.tensor([r["material"] for r in rows], dtype=torch.long),
        colors=torch.stack([r["colors"] for r in rows]) if rows else torch.zeros(0, 2, 3),
        frequency=torch.tensor([r["frequency"] for r in rows], dtype=torch.float32),
        waves=torch.stack([r["waves"] for r in rows]) if rows else torch.zeros(0, _NOISE_WAVES, 4),
        ground_half_size=config.ground_half_size, ground_material=MATERIALS.index(config.ground_material),
        ground_colors=ground_colors.clamp(0, 1), ground_frequency=2.0, light_dir=light,
        ambient=config.ambient, specular=config.specular, shininess=config.shininess, seed=seed, config=config)


# ray / primitive intersections in local frames (unit directions) -------------------------------
def _first_positive(*candidates: Tensor, eps: float = 1e-5) -> Tensor:
    """Per element, the smallest candidate t > eps (inf where none)."""
    stacked = torch.stack(candidates, -1)
    stacked = torch.where(stacked > eps, stacked, torch.full_like(stacked, _NO_HIT))
    return stacked.amin(-1)


def _hit_sphere(o: Tensor, d: Tensor, p: Tensor) -> Tensor:
    r = p[..., 0]
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - r * r
    disc = b * b - c
    root = torch.sqrt(disc.clamp_min(0))
    t = _first_positive(-b - root, -b + root)
    return torch.where(disc >= 0, t, torch.full_like(t, _NO_HIT))


def _hit_box(o: Tensor, d: Tensor, p: Tensor) -> Tensor:
    inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t0, t1 = (-p - o) * inv, (p - o) * inv
    t_in = torch.minimum(t0, t1).amax(-1)
    t_out = torch.maximum(t0, t1).amin(-1)
    t = _first_positive(t_in, t_out)
    return torch.where(t_out >= t_in, t, torch.full_like(t, _NO_HIT))


def _hit_cylinder(o: Tensor, d: Tensor, p: Tensor) -> Tensor:
    radius, half_h = p[..., 0], p[..., 1]
    a = d[..., 0] ** 2 + d[..., 1] ** 2
    b = o[..., 0] * d[..., 0] + o[..., 1] * d[..., 1]
    c = o[..., 0] ** 2 + o[..., 1] ** 2 - radius**2
    disc = b * b - a * c
    root = torch.sqrt(disc.clamp_min(0))
    safe_a = torch.where(a < 1e-12, torch.ones_like(a), a)
    sides = []
    for t in ((-b - root) / safe_a, (-b + root) / safe_a):
        z = o[..., 2] + t * d[..., 2]
        ok = (disc >= 0) & (a >= 1e-12) & (z.abs() <= half_h)
        sides.append(torch.where(ok, t, torch.full_like(t, _NO_HIT)))
    dz = torch.where(d[..., 2].abs() < 1e-12, torch.full_like(d[..., 2], 1e-12), d[..., 2])
    caps = []
    for sign in (-1.0, 1.0):
        t = (sign * half_h - o[..., 2]) / dz
        xy = o[..., :2] + t[..., None] * d[..., :2]
        ok = (xy**2).sum(-1) <= radius**2
        caps.append(torch.where(ok, t, torch.full_like(t, _NO_HIT)))
    return _first_positive(*sides, *caps)


def _torus_sdf(q: Tensor, major: Tensor, minor: Tensor) -> Tensor:
    ring = torch.sqrt(q[..., 0] ** 2 + q[..., 1] ** 2) - major
    return torch.sqrt(ring**2 + q[..., 2] ** 2) - minor


def _hit_torus(o: Tensor, d: Tensor, p: Tensor) -> Tensor:
    """Real roots of the torus quartic (companion eigenvalues, float64), Newton-polished."""
    shape = o.shape[:-1]
    o, d = o.reshape(-1, 3).double(), d.reshape(-1, 3).double()
    major, minor = p[..., 0].reshape(-1).double(), p[..., 1].reshape(-1).double()
    out = torch.full(o.shape[:1], _NO_HIT, dtype=torch.float64)
    # Only rays that hit the bounding sphere; start them at its entry point for conditioning.
    bound = torch.stack([major + minor, torch.zeros_like(major), torch.zeros_like(major)], -1)
    inside = (o * o).sum(-1) < (major + minor) ** 2
    t_enter = torch.where(inside, torch.zeros_like(major), _hit_sphere(o, d, bound))
    idx = torch.nonzero(torch.isfinite(t_enter)).squeeze(-1)
    if len(idx) == 0:
        return out.reshape(shape).float()
    t0 = t_enter[idx].clamp_min(0)
    oo, dd, big, small = o[idx] + t0[:, None] * d[idx], d[idx], major[idx], minor[idx]
    k = (oo * oo).sum(-1) + big**2 - small**2
    b = (oo * dd).sum(-1)
    dxy2 = dd[:, 0] ** 2 + dd[:, 1] ** 2
    a3 = 4 * b
    a2 = 4 * b * b + 2 * k - 4 * big**2 * dxy2
    a1 = 4 * b * k - 8 * big**2 * (oo[:, 0] * dd[:, 0] + oo[:, 1] * dd[:, 1])
    a0 = k * k - 4 * big**2 * (oo[:, 0] ** 2 + oo[:, 1] ** 2)
    companion = torch.zeros(len(idx), 4, 4, dtype=torch.float64)
    companion[:, 1:, :3] = torch.eye(3, dtype=torch.float64)
    companion[:, :, 3] = -torch.stack([a0, a1, a2, a3], -1)
    roots = torch.linalg.eigvals(companion)
    t = roots.real
    scale = 1.0 + t.abs()
    t = torch.where(roots.imag.abs() < 1e-3 * scale, t, torch.full_like(t, _NO_HIT))
    coeffs = torch.stack([torch.ones_like(a0), a3, a2, a1, a0], -1)[:, None, :]
    for _ in range(3):  # Newton polish on the quartic
        f = (((coeffs[..., 0] * t + coeffs[..., 1]) * t + coeffs[..., 2]) * t + coeffs[..., 3]) * t + coeffs[..., 4]
        df = ((4 * coeffs[..., 0] * t + 3 * coeffs[..., 1]) * t + 2 * coeffs[..., 2]) * t + coeffs[..., 3]
        step = torch.where(torch.isfinite(t) & (df.abs() > 1e-12), f / df, torch.zeros_like(t))
        t = t - step.clamp(-1e-2, 1e-2)
    q = oo[:, None, :] + t[..., None].clamp(max=1e3) * dd[:, None, :]
    valid = torch.isfinite(t) & (_torus_sdf(q, big[:, None], small[:, None]).abs() < 1e-4 * (1 + small[:, None]))
    t = torch.where(valid, t + t0[:, None], torch.full_like(t, _NO_HIT))
    out[idx] = _first_positive(*t.unbind(-1)).to(out)
    return out.reshape(shape).float()


_HITTERS = {"sphere": _hit_sphere, "box": _hit_box, "cylinder": _hit_cylinder, "torus": _hit_torus}


def _local_normal(kind: str, q: Tensor, p: Tensor) -> Tensor:
    """Outward unit normals at local surface points q [M,3] of primitives with params p [M,3]."""
    if kind == "sphere":
        n = q
    elif kind == "box":
        rel = q / p
        axis = rel.abs().argmax(-1)
        n = torch.nn.functional.one_hot(axis, 3).to(q) * torch.sign(rel)
    elif kind == "cylinder":
        on_cap = (q[:, 2].abs() - p[:, 1]).abs() < 1e-4 * (1 + p[:, 1])
        side = torch.cat([q[:, :2], torch.zeros_like(q[:, 2:])], -1)
        cap = torch.zeros_like(q)
        cap[:, 2] = torch.sign(q[:, 2])
        n = torch.where(on_cap[:, None], cap, side)
    else:  # torus: from the closest point on the core circle
        ring = torch.nn.functional.normalize(torch.cat([q[:, :2], torch.zeros_like(q[:, 2:])], -1), dim=-1)
        n = q - p[:, :1] * ring
    return torch.nn.functional.normalize(n, dim=-1)


def _texture(material: Tensor, q: Tensor, colors: Tensor, freq: Tensor, waves: Tensor) -> Tensor:
    """Albedo [M,3] at local points q [M,3] for solid textures of each material."""
    c0, c1 = colors[:, 0], colors[:, 1]
    fq = q * freq[:, None]
    checker = (torch.floor(fq).sum(-1) % 2)[:, None]
    stripes = (torch.sin(2 * math.pi * fq[:, 2] + 0.7 * torch.sin(2 * math.pi * fq[:, 0])) > 0).float()[:, None]
    noise = 0.5 + 0.5 * torch.sin(torch.einsum("mkc,mc->mk", waves[..., :3], q) + waves[..., 3]).mean(-1) * 2.0
    noise = noise.clamp(0, 1)[:, None]
    mix = torch.zeros_like(checker)
    mix = torch.where((material == MATERIALS.index("checker"))[:, None], checker, mix)
    mix = torch.where((material == MATERIALS.index("stripes"))[:, None], stripes, mix)
    mix = torch.where((material == MATERIALS.index("noise"))[:, None], noise, mix)
    return c0 * (1 - mix) + c1 * mix


# rendering ------------------------------------------------------------------------------------
def cast_rays(world: World, origins: Float[Tensor, "R 3"], dirs: Float[Tensor, "R 3"]) -> dict[str, Tensor]:
    """Closest hit of each ray: t [R] (inf = miss), normal [R,3] world, albedo [R,3], semantic [R],
    instance [R] (0 background, 1 ground, 2.. objects in world order)."""
    r = len(origins)
    best_t = torch.full((r,), _NO_HIT)
    best_id = torch.zeros(r, dtype=torch.long)  # 0 miss, 1 ground, 2 + i object i
    # ground square at z = 0
    dz = torch.where(dirs[:, 2].abs() < 1e-12, torch.full_like(dirs[:, 2], 1e-12), dirs[:, 2])
    t_ground = -origins[:, 2] / dz
    xy = origins[:, :2] + t_ground[:, None] * dirs[:, :2]
    ground_ok = (t_ground > 1e-5) & (xy.abs() <= world.ground_half_size).all(-1)
    best_t = torch.where(ground_ok, t_ground, best_t)
    best_id = torch.where(ground_ok, torch.ones_like(best_id), best_id)
    # objects, grouped by type so each closed form runs once over [R, P_type]
    for kind_name, hitter in _HITTERS.items():
        members = torch.nonzero(world.kind == OBJECT_TYPES.index(kind_name)).squeeze(-1)
        if len(members) == 0:
            continue
        rot, ctr, prm = world.rotation[members], world.center[members], world.params[members]
        o_local = torch.einsum("pji,rpj->rpi", rot, origins[:, None, :] - ctr[None])
        d_local = torch.einsum("pji,rj->rpi", rot, dirs)
        t = hitter(o_local, d_local, prm[None].expand(r, -1, -1))
        t_min, arg = t.min(-1)
        closer = t_min < best_t
        best_t = torch.where(closer, t_min, best_t)
        best_id = torch.where(closer, members[arg] + 2, best_id)

    hit = torch.isfinite(best_t)
    points = origins + best_t.clamp(max=1e6)[:, None] * dirs
    normal = torch.zeros(r, 3)
    albedo = torch.zeros(r, 3)
    semantic = torch.zeros(r, dtype=torch.long)
    on_ground = best_id == 1
    normal[on_ground] = torch.tensor([0.0, 0.0, 1.0])
    gq = points[on_ground]
    gcheck = (torch.floor(gq[:, :2] * world.ground_frequency).sum(-1) % 2)[:, None]
    albedo[on_ground] = world.ground_colors[0] * (1 - gcheck) + world.ground_colors[1] * gcheck
    semantic[on_ground] = 1
    on_object = best_id >= 2
    obj = best_id[on_object] - 2
    if len(obj):
        rot, ctr = world.rotation[obj], world.center[obj]
        q = torch.einsum("mji,mj->mi", rot, points[on_object] - ctr)
        for kind_name in OBJECT_TYPES:
            sel = world.kind[obj] == OBJECT_TYPES.index(kind_name)
            if sel.any():
                n_local = _local_normal(kind_name, q[sel], world.params[obj][sel])
                normal_rows = torch.einsum("mij,mj->mi", rot[sel], n_local)
                idx = torch.nonzero(on_object).squeeze(-1)[sel]
                normal[idx] = normal_rows
        albedo[on_object] = _texture(world.material[obj], q, world.colors[obj], world.frequency[obj], world.waves[obj])
        semantic[on_object] = world.semantic[obj]
    return {"t": best_t, "hit": hit, "points": points, "normal": normal, "albedo": albedo,
            "semantic": semantic, "instance": best_id}


def shade(world: World, albedo: Tensor, normal: Tensor, dirs: Tensor) -> Tensor:
    """Diffuse + ambient (+ Blinn-Phong specular) radiance [R,3]; normals are made to face the ray."""
    facing = torch.where(((normal * dirs).sum(-1, keepdim=True) > 0), -normal, normal)
    light = world.light_dir.to(albedo)
    diffuse = (facing * light).sum(-1, keepdim=True).clamp_min(0)
    color = albedo * (world.ambient + (1 - world.ambient) * diffuse)
    if world.specular > 0:
        half = torch.nn.functional.normalize(light - dirs, dim=-1)
        spec = (facing * half).sum(-1, keepdim=True).clamp_min(0) ** world.shininess
        color = color + world.specular * spec * (diffuse > 0)
    return color.clamp(0, 1)


@torch.no_grad()
def render_world(world: World, cameras: Cameras, background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 chunk: int = 65536) -> dict[str, Tensor]:
    """Exact render of every camera: rgb [N,H,W,3] in [0,1], depth [N,H,W] (camera z, 0 on a miss),
    normals [N,H,W,3] (world, outward, zeros on a miss), semantic / instance [N,H,W] long,
    mask [N,H,W] bool (something was hit)."""
    cameras = cameras.to("cpu", torch.float32)
    rays = cameras.rays()
    origins, dirs = rays.origins.reshape(-1, 3), rays.dirs.reshape(-1, 3)
    forward = rearrange(cameras.forward[:, None, None, :].expand_as(rays.dirs), "n h w c -> (n h w) c")
    bg = torch.tensor(background, dtype=torch.float32)
    parts: dict[str, list[Tensor]] = {k: [] for k in ("rgb", "depth", "normals", "semantic", "instance", "mask")}
    for start in range(0, len(origins), chunk):
        o, d = origins[start : start + chunk], dirs[start : start + chunk]
        hit = cast_rays(world, o, d)
        rgb = torch.where(hit["hit"][:, None], shade(world, hit["albedo"], hit["normal"], d), bg)
        z = hit["t"] * (d * forward[start : start + chunk]).sum(-1)
        parts["rgb"].append(rgb)
        parts["depth"].append(torch.where(hit["hit"], z, torch.zeros_like(z)))
        parts["normals"].append(hit["normal"])
        parts["semantic"].append(hit["semantic"])
        parts["instance"].append(hit["instance"])
        parts["mask"].append(hit["hit"])
    n, h, w = len(cameras), cameras.height, cameras.width
    return {k: torch.cat(v).reshape(n, h, w, *torch.cat(v).shape[1:]) for k, v in parts.items()}
