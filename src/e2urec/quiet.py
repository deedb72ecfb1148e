"""Hide transformers' own warnings and progress bars while our code reports progress."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Within the block (or the decorated function, `@quiet_transformers()`): transformers logs
    errors only, shows no loading bars and its FutureWarnings are ignored. The caller's
    settings are restored afterwards, so library calls leave a notebook's logging as it was."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
            yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
