"""What every script does around its work: project errors, and outputs that cannot be written
(disk full, file-size limit, read-only folder), become one line on stderr and exit code 2 (a
traceback only with --debug or SCENE3D_DEBUG=1)."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

from scene3d.errors import Scene3DError, one_line

# OSErrors that mean "cannot write there", not a bug: reported in one line like project errors.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM}


def run_cli(main: Callable[[], object]) -> None:
    debug = "--debug" in sys.argv or os.environ.get("SCENE3D_DEBUG") == "1"
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    try:
        main()
    except Scene3DError as err:
        if debug:
            raise
        print(f"error: {one_line(err, 1000)}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if debug or err.errno not in _WRITE_ERRNOS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
