"""What every script does around its work: project errors become one line on stderr and exit
code 2 (a traceback only with --debug or SCENE3D_DEBUG=1)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from scene3d.errors import Scene3DError


def run_cli(main: Callable[[], object]) -> None:
    debug = "--debug" in sys.argv or os.environ.get("SCENE3D_DEBUG") == "1"
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    try:
        main()
    except Scene3DError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
