"""The one error idiom: library code raises a NesyError for bad input or a refused action; the
CLI layer (distill.cli.run) prints it as one line `error: …` and exits 2, with no traceback
unless --debug / NESY_DEBUG=1. Anything else that escapes is a bug and keeps its traceback."""

from __future__ import annotations


class NesyError(Exception):
    """Bad input or a refused action, worded for the person who typed the command."""

    exit_code = 2
