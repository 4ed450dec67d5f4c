"""Before ``checkpoints set`` writes "resume after sequence N": does the shard hold N?

The local log answers from its bounds; a stream service (Kinesis, DynamoDB Streams) is asked for
an iterator after N through the pipeline's own reader, which it refuses for a sequence that is
not the shard's. Only reads: no record is handled and no checkpoint moves.
"""

from __future__ import annotations

import asyncio

from ...config import LoadedPipeline
from ...connectors.local.source import LocalSourceConfig
from ...errors import CheckpointError, StreamfnError
from ...protocols.source import StartingPosition
from ...records import Position
from ..parts import build_source, local_log_path
from ..readonly import open_log

#: Seconds the source may take to answer the probe before the edit is refused as unverified.
PROBE_TIMEOUT = 20.0


async def check_sequence(loaded: LoadedPipeline, shard_id: str, sequence: int) -> None:
    """Raise CheckpointError unless ``shard_id`` holds ``sequence`` (or it is just before the first record)."""
    if sequence < 0:
        raise CheckpointError(f"sequence {sequence} is negative: sequences start at 0")
    if isinstance(loaded.config.source, LocalSourceConfig):
        check_local_sequence(loaded, loaded.config.source.stream, shard_id, sequence)
        return
    source = build_source(loaded)
    await source.open()
    try:
        shard = next((s for s in await source.list_shards() if s.shard_id == shard_id), None)
        if shard is None:
            raise CheckpointError(f"the source has no shard {shard_id!r}")
        reader = source.reader(shard, Position(sequence), StartingPosition("trim_horizon"))
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await reader.read(1, 0.0)
        except TimeoutError:
            raise CheckpointError(f"{shard_id}: the source did not answer within {PROBE_TIMEOUT:.0f}s whether it "
                                  f"holds sequence {sequence}; nothing was changed") from None
        except StreamfnError as exc:
            raise CheckpointError(f"{shard_id} does not hold sequence {sequence} (the source refused to read "
                                  f"after it: {exc}); nothing was changed") from exc
        finally:
            await reader.close()
    finally:
        await source.close()


def check_local_sequence(loaded: LoadedPipeline, stream: str, shard_id: str, sequence: int) -> None:
    """Raise unless the local log's shard holds ``sequence`` (retained, not past the tip)."""
    path = local_log_path(loaded)
    log = None if path is None else open_log(path)
    if log is None or stream not in log.streams():
        raise CheckpointError(f"the local log of stream {stream!r} does not exist yet: nothing to set")
    try:
        if shard_id not in log.shard_ids(stream):
            raise CheckpointError(f"stream {stream!r} has no shard {shard_id!r}")
        first, tip = log.first_retained_seq(stream, shard_id), log.last_seq(stream, shard_id)
    finally:
        log.close()
    if sequence > tip:
        raise CheckpointError(f"{shard_id} has no sequence {sequence}: the log ends at {tip}")
    if sequence < first - 1:
        raise CheckpointError(f"{shard_id}: sequences before {first} were trimmed from the log (retention); "
                              f"set {first - 1} or later, or reset --to trim_horizon")
