"""Counts page views per page in each batch of click events."""

from collections import Counter
from typing import Any

from streamfn import Batch, Context


def handle(batch: Batch, context: Context) -> list[dict[str, Any]]:
    views = Counter(click["page"] for click in batch.json())
    return [
        {
            "shard": batch.shard_id,
            "first_sequence": batch.first.sequence,
            "last_sequence": batch.last.sequence,
            "page": page,
            "views": count,
        }
        for page, count in views.most_common()
    ]
