"""Radiance fields behind one protocol (see `base.Field`), registered by name:
`mlp` (NeRF), `tensorf` (TensoRF-VM), `grid` (Plenoxels-like voxels + SH), `hashgrid` (Instant-NGP)."""

from scene3d.fields.base import (
    FIELDS,
    Field,
    FieldConfig,
    build_field,
    field_config,
    load_field,
    register_field,
    save_field,
    trunc_exp,
)
from scene3d.fields.grid import GridField, GridFieldConfig
from scene3d.fields.hashgrid import HashGridField, HashGridFieldConfig
from scene3d.fields.mlp import MLPField, MLPFieldConfig
from scene3d.fields.tensorf import TensoRFField, TensoRFFieldConfig

__all__ = [
    "FIELDS",
    "Field",
    "FieldConfig",
    "GridField",
    "GridFieldConfig",
    "HashGridField",
    "HashGridFieldConfig",
    "MLPField",
    "MLPFieldConfig",
    "TensoRFField",
    "TensoRFFieldConfig",
    "build_field",
    "field_config",
    "load_field",
    "register_field",
    "save_field",
    "trunc_exp",
]
