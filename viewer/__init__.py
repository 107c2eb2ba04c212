"""The interactive web viewer (viser): scenes rendered from the browser camera, dataset cameras,
live training curves. Nothing in `scene3d` or `avfm` imports this package."""
