"""Adapters from the project's renderers to the viewer's `SceneSource` / `ViewerContent`, one module
per family (Gaussian scenes now; radiance fields once `scene3d.fields` is on main)."""
