"""LoRA adapters (Hu et al. 2021) and their convolution analogue (LoCon), for any module:
y = base(x) + (alpha / r) up(down(x)) with the base frozen, `down` Kaiming-uniform and `up` zero, so a
freshly adapted module computes exactly what it did. Used by VSD's noise estimator and by
splat-and-distill's LoRA fine-tuning."""

from __future__ import annotations

from torch import Tensor, nn


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable rank-r update `up(down(x))` scaled by alpha / r."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None):
        super().__init__()
        self.base, self.scale = base, (alpha or rank) / rank
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.up.weight)

    @property
    def weight(self) -> Tensor:
        """The effective weight W + scale * up @ down (differentiable in the adapters), for modules that
        call F.linear with their layer's weight and bias directly."""
        return self.base.weight + self.scale * self.up.weight @ self.down.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * self.up(self.down(x))


class LoRAConv2d(nn.Module):
    """The convolution analogue (LoCon): `down` is a k x k conv to r channels with the base's stride
    and padding, `up` a zero-initialised 1 x 1 conv back to the base's channels."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float | None = None):
        super().__init__()
        self.base, self.scale = base, (alpha or rank) / rank
        self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding,
                              base.dilation, bias=False)
        self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * self.up(self.down(x))


def add_lora(module: nn.Module, rank: int, alpha: float | None = None, conv: bool = False,
             within: tuple[type[nn.Module], ...] = (), names: tuple[str, ...] = ()) -> list[nn.Parameter]:
    """Freeze `module` and wrap every nn.Linear (and, with `conv`, every ungrouped nn.Conv2d) in it, in
    place; returns the adapters' parameters, the only trainable ones left. alpha None: alpha = rank.
    `within` (module types, e.g. diffusers' Attention): only layers inside such a submodule are wrapped;
    `names` (attribute names, e.g. ("qkv", "proj")): only layers held under such a name are wrapped."""
    module.requires_grad_(False)
    scopes = [m for m in module.modules() if isinstance(m, within)] if within else [module]
    found = [(parent, name, child) for scope in scopes for parent in scope.modules()
             for name, child in parent.named_children()
             if (not names or name in names)
             and (isinstance(child, nn.Linear) or (conv and isinstance(child, nn.Conv2d) and child.groups == 1))]
    params = []
    for parent, name, child in found:
        wrapped = (LoRALinear if isinstance(child, nn.Linear) else LoRAConv2d)(child, rank, alpha)
        wrapped.to(device=child.weight.device, dtype=child.weight.dtype)
        setattr(parent, name, wrapped)
        params += [wrapped.down.weight, wrapped.up.weight]
    return params


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRALinear of `module` back into a plain nn.Linear (W + scale * up @ down), in place;
    the module then has its original layout (state dicts load into an unadapted copy) and computes the
    same. Returns `module`."""
    found = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
             if isinstance(child, LoRALinear)]
    for parent, name, child in found:
        merged = child.weight.detach()
        child.base.weight.data.copy_(merged)
        setattr(parent, name, child.base)
    return module
