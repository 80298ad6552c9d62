"""The console scripts. Each reports a user's mistake (a :class:`~fairseq_kd.io.UserError`) as one line
on stderr and exits with status 2; anything else is a bug and shows its traceback."""

import sys

from ..io import UserError


def run(main, prog, argv=None):
    """Calls MAIN(ARGV) the way every console script of fairseq_kd does; returns the exit status."""
    try:
        status = main(argv)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return status or 0
