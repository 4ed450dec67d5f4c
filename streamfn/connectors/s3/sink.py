"""The S3 sink: one object per batch under a key derived from the batch's bounds.

A replayed batch has the same bounds (the engine records them before writing), so it renders the
same key and overwrites its own object: never a second one. Bodies are NDJSON (optionally gzip,
written with a zero mtime so a replay produces identical bytes) sent with ``Content-MD5``; bodies
from ``multipart_threshold`` up go as a multipart upload, each part with its own MD5, aborted
if any part fails so no half-upload lingers.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import msgspec

from ...aws import AWS_DEFAULTS, AwsSettings, Timeout, error_code
from ...errors import RetryableError, SinkError
from ...protocols.sink import SinkBatch, SinkConfig
from ..shared.keys import DEFAULT_TEMPLATE, check_template, render_key
from ..shared.ndjson import encode_ndjson

if TYPE_CHECKING:
    from ...components import BuildContext

MIB = 1024 * 1024
MIN_PART = 5 * MIB  # S3's smallest part (except the last)
#: Seconds per request without a request_timeout: room for a whole part of a large upload.
S3_SINK_TIMEOUT = 60.0


class S3SinkConfig(SinkConfig, kw_only=True, tag="s3"):
    """Write each batch's items as one NDJSON object in ``bucket``."""

    bucket: Annotated[str, msgspec.Meta(description="The bucket objects are written to.")]
    key: Annotated[str, msgspec.Meta(description=(
        "Key template. Names: {pipeline} {stream} {shard_id} {lane} {first} {last} {first_seq} {last_seq} "
        "{first_sub} {last_sub} and {year} {month} {day} {hour} of the first record's arrival (UTC). It must hold "
        "{shard_id}, {first...} and {last...} so a replay overwrites its own object."))] = DEFAULT_TEMPLATE
    gzip: Annotated[bool, msgspec.Meta(description=(
        "Compress bodies (`.gz` is appended to the key, `Content-Encoding: gzip` set)."))] = False
    endpoint_url: Annotated[str | None, msgspec.Meta(description=(
        "An S3-compatible endpoint (path-style addressing); default "
        "`[aws]`'s, else `AWS_ENDPOINT_URL_S3` / AWS."))] = None
    region: Annotated[str | None, msgspec.Meta(description=(
        "AWS region; default `[aws]`'s, else `AWS_REGION` / `AWS_DEFAULT_REGION` / the profile's region."))] = None
    multipart_threshold: Annotated[int, msgspec.Meta(ge=MIN_PART, description=(
        "Bodies this size or larger are sent as a multipart upload."))] = 16 * MIB
    part_size: Annotated[int, msgspec.Meta(ge=MIN_PART, description=(
        "Bytes per part of a multipart upload (at least 5 MiB)."))] = 8 * MIB
    content_type: Annotated[str, msgspec.Meta(description=(
        "The Content-Type of each object."))] = "application/x-ndjson"
    request_timeout: Annotated[Timeout | None, msgspec.Meta(description=(
        "Seconds one request may take in all (connect, send, answer) before it is retried; default "
        "`[aws]`'s, else 60."))] = None
    create_bucket: Annotated[bool, msgspec.Meta(description=(
        "Create the bucket at start when missing (handy with emulators)."))] = False

    def build(self, ctx: BuildContext) -> S3Sink:
        check_template(self.key, "sinks.key")
        return S3Sink(self, ctx.pipeline, ctx.aws)

    def check(self, pipeline: str, stream: str) -> None:
        check_template(self.key, "sinks.key", pipeline=pipeline, stream=stream)


def content_md5(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode("ascii")


class S3Sink:
    """Objects in S3, one per batch, keyed by the batch's bounds."""

    keyed_by_batch: ClassVar[bool] = True

    def __init__(self, config: S3SinkConfig, pipeline: str = "", aws: AwsSettings = AWS_DEFAULTS) -> None:
        self.config = config
        self._template = config.key + (".gz" if config.gzip and not config.key.endswith(".gz") else "")
        self.aws = aws.under(region=config.region, endpoint_url=config.endpoint_url,
                             request_timeout=config.request_timeout).client(
            "s3", default_timeout=S3_SINK_TIMEOUT)

    async def open(self) -> None:
        await self.aws.open()
        if self.config.create_bucket:
            try:
                await self.aws.call("head_bucket", SinkError, Bucket=self.config.bucket)
            except SinkError:
                try:
                    await self.aws.call("create_bucket", SinkError, Bucket=self.config.bucket)
                except SinkError as exc:
                    if error_code(exc.__cause__ or exc) != "BucketAlreadyOwnedByYou":
                        raise

    def key_for(self, batch: SinkBatch) -> str:
        return render_key(self._template, batch)

    def body_for(self, batch: SinkBatch) -> bytes:
        """The object's bytes; SinkError when an item is not JSON (a Decimal, a set...), so the
        batch fails through its failure policy instead of being retried as it is forever."""
        try:
            body = encode_ndjson(batch.items)
        except (TypeError, ValueError) as exc:
            raise SinkError(f"S3 sink: an item of shard {batch.shard_id} cannot be written as JSON ({exc}); "
                            "return JSON values (dict, list, str, int, float, bool, None) or bytes") from exc
        return gzip.compress(body, mtime=0) if self.config.gzip else body

    async def write(self, batch: SinkBatch) -> None:
        key, body = self.key_for(batch), self.body_for(batch)
        extra: dict[str, Any] = {"ContentType": self.config.content_type}
        if self.config.gzip:
            extra["ContentEncoding"] = "gzip"
        if len(body) >= self.config.multipart_threshold:
            await self._multipart(key, body, extra)
        else:
            await self.aws.call("put_object", SinkError, Bucket=self.config.bucket, Key=key, Body=body,
                                ContentMD5=content_md5(body), **extra)

    async def _multipart(self, key: str, body: bytes, extra: dict[str, Any]) -> None:
        bucket = self.config.bucket
        created = await self.aws.call("create_multipart_upload", SinkError, Bucket=bucket, Key=key, **extra)
        upload_id = created["UploadId"]
        try:
            parts = []
            size = self.config.part_size
            for number, start in enumerate(range(0, len(body), size), start=1):
                chunk = body[start:start + size]
                answer = await self.aws.call("upload_part", SinkError, Bucket=bucket, Key=key, UploadId=upload_id,
                                             PartNumber=number, Body=chunk, ContentMD5=content_md5(chunk))
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            await self.aws.call("complete_multipart_upload", SinkError, Bucket=bucket, Key=key, UploadId=upload_id,
                                MultipartUpload={"Parts": parts})
        except Exception:
            # A lifecycle rule for incomplete uploads cleans up what a failed abort leaves.
            with contextlib.suppress(SinkError, RetryableError):
                await self.aws.call("abort_multipart_upload", SinkError, Bucket=bucket, Key=key, UploadId=upload_id)
            raise

    async def close(self) -> None:
        await self.aws.close()
