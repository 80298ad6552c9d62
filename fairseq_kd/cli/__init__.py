"""The console scripts. Each reports a user's mistake (a :class:`~fairseq_kd.io.UserError`) as one line
on stderr and exits with status 2, as it does a write that failed for want of space; anything else is a
bug and shows its traceback."""

import argparse
import sys
from typing import Callable, List, Optional

from ..io import UserError, write_failure


def run(main: Callable[[Optional[List[str]]], Optional[int]], prog: str, argv: Optional[List[str]] = None) -> int:
    """Calls MAIN(ARGV) the way every console script of fairseq_kd does; returns the exit status."""
    try:
        status = main(argv)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if write_failure(e) is None:
            raise
        print(f"{prog}: error: {write_failure(e)}", file=sys.stderr)
        return 2
    return status or 0


def add_tokenizer_arguments(parser: argparse.ArgumentParser, applies_to: str) -> argparse._MutuallyExclusiveGroup:
    """--spm-model | --bpe-codes: the subword model that raw text (APPLIES_TO) is encoded with."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--spm-model", help=f"sentencepiece model that {applies_to} is encoded with")
    group.add_argument("--bpe-codes", help=f"subword-nmt BPE codes that {applies_to} is encoded with")
    return group
