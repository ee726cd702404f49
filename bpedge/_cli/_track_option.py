"""``--track`` and ``--detect-every``, as ``segment`` and ``bench`` take them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bpedge._cli._errors import UsageError

if TYPE_CHECKING:
    from bpedge._tracking import TrackOptions


def track_options(track: bool, detect_every: int | None) -> TrackOptions | None:
    """The tracker's options for ``--track`` (None without it; ``--detect-every`` left out keeps
    :class:`~bpedge._tracking.TrackOptions`' default). ``--detect-every`` without ``--track`` is
    refused: it was taken, and did nothing."""
    if not track:
        if detect_every is not None:
            raise UsageError("--detect-every applies to --track only: add --track, or leave it "
                             "out")
        return None
    from bpedge._tracking import TrackOptions

    return TrackOptions() if detect_every is None else TrackOptions(detect_every=detect_every)
