"""What ``curvature-train`` keeps off the console: lines of Lightning and torch that a user of the app can do nothing
about, so that a run prints its own lines and Lightning's progress bar.

Where the app could remove a line's cause it does (a datamodule without a validation set gets
``limit_val_batches=0``: Lightning then skips the loop instead of warning that its loader is empty). What is left is
matched here, in one place, narrowly: by its logger or warning category and its message; every other line shows.
"""

from __future__ import annotations

import logging
import re
import warnings

__all__ = ["silence_what_users_cannot_act_on"]

#: where Lightning's ``rank_zero_info`` lines are logged
_LIGHTNING_INFO = "lightning.pytorch.utilities.rank_zero"
#: the info lines dropped, and why; the warnings of that logger ("GPU available but not used", ...) all still show
_DROPPED_INFO = re.compile("|".join((
    r"💡 Tip: ",  # an advertisement for Lightning's cloud logger, printed whenever no LitLogger is configured
    r"(GPU|TPU) available: ",  # the device summary: the trainer config chose the device (an unused GPU still warns)
    r"`Trainer\.fit` stopped: `max_(epochs|steps)=-?\d+` reached\.$",  # the planned end; the app's summary follows
)))


class _DropInfo(logging.Filter):
    """Drops the info records of :data:`_DROPPED_INFO`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and _DROPPED_INFO.match(record.getMessage()))


_FILTER = _DropInfo()  # one instance: addFilter keeps it once, however many jobs a sweep runs in this process


def silence_what_users_cannot_act_on() -> None:
    """Drop Lightning's tip, device summary and planned-end lines, and torch's deprecation of ``LeafSpec``, which
    Lightning's own ``CombinedLoader`` still builds (seen with torch 2.14 and Lightning 2.6.6); idempotent."""
    logging.getLogger(_LIGHTNING_INFO).addFilter(_FILTER)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
