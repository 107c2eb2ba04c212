"""Adapters from the project's renderers to the viewer's `SceneSource` / `ViewerContent`, one module
per family (radiance fields, Gaussian scenes). They import `viewer.content`, never the opener:
`viewer.inputs` imports them and lists them in its `RUN_ADAPTERS` / `FILE_ADAPTERS`."""
