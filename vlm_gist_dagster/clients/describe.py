"""Stage A over the network: the paper's content-retry loop for one image, and a batch runner that keeps
N requests in flight across images (docs/protocol/pipeline.md §1.2–1.6).

Per image (:func:`describe_image`): prepare the image (§1.2) → build the request (§1.3) → up to
``1 + retry`` attempts (§1.6, docs/protocol/pipeline.md gotcha 2), each: cache lookup or one HTTP exchange (§1.4) →
post-processing and validation (§1.4–1.5) → recorded with its raw text, reasoning, reason, duration,
tokens and cost. Transport retries (429/5xx/connection) happen *inside* an attempt and are not counted.

**Fail / Ret.** The paper appends a failed completion to ``failed_structured_description_completions``
only in the branch that *re-queues* the image::

    elif settings[i]['retry'] == -1 or settings[i]['retry'] > retries[i]:
        retries[i] += 1
        metadata[i]['failed_structured_description_completions'] = ... + [completion]

and the final failure (retries exhausted) goes to the ``else`` branch, which records ``stamp_error``
and ``report_error`` but appends nothing. docs/protocol/evaluation.md §2.10: "Ret. = mean number of failed
structured-description attempts per image (0–3 with retry=3; an image that failed completely
contributes 3)". So :attr:`ImageDescription.failed_attempts` — the per-image Ret. value and the
``failed_attempts`` column of ``protocol.columns`` — is the number of failed attempts *followed by a
retry*: ``min(failed, retry)`` for a finite ``retry``; 0–3 with ``retry: 3``. Every failed attempt,
the last one included, is still kept in :attr:`ImageDescription.attempts`
(:attr:`~ImageDescription.failed_attempts_total` counts them: 0–4). Fail = ``not success``.

**Time** is the duration of the successful attempt only (§1.6: the start stamp is overwritten at every
attempt); here, the duration of the HTTP request that produced it (backoff waits excluded).

>>> ProgressTracker(64, clock=iter([0.0, 9.0]).__next__).update(ProgressEvent(37, 64, 37, 0, "x", True))
'37/64 images (57.8%), 4.1 img/s, ETA 7 s'
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..protocol.completions import TokenUsage
from ..protocol.images import ImageError, PreparedImage, prepare_image
from ..protocol.settings import DescriptionSettings
from ..protocol.structured_description import (
    Attempt,
    DescriptionAttempts,
    InvalidDescription,
    build_request,
    evaluate_completion,
    require_supported,
)
from .chat import AttemptOutcome, CacheTag, ChatClient
from .errors import TransportRetriesExhausted, get_logger, redact

__all__ = [
    "AttemptRecord",
    "BatchIncomplete",
    "ImageDescription",
    "ImageInput",
    "ProgressEvent",
    "ProgressTracker",
    "describe_image",
    "describe_images",
]

log = get_logger("vlm_gist_dagster.clients.describe")


@dataclass(frozen=True)
class AttemptRecord:
    """One structured-description attempt of one image: the protocol's :class:`Attempt` (raw text,
    reasoning, finish reason, reason of failure, duration, usage, report) plus how it was obtained."""

    index: int
    attempt: Attempt
    http_retries: int = 0
    from_cache: bool = False
    cost_usd: float | None = None

    @property
    def ok(self) -> bool:
        return self.attempt.ok

    @property
    def error(self) -> str | None:
        return self.attempt.error

    @property
    def raw_text(self) -> str | None:
        return self.attempt.raw_text

    @property
    def duration_s(self) -> float:
        return self.attempt.duration_s

    @property
    def usage(self) -> TokenUsage | None:
        return self.attempt.usage

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (for Parquet / metadata columns)."""
        a = self.attempt
        usage = a.usage
        return {
            "attempt": self.index,
            "ok": a.ok,
            "error": a.error,
            "error_message": a.error_message,
            "raw_text": a.raw_text,
            "reasoning": a.reasoning,
            "finish_reason": a.finish_reason,
            "duration_s": a.duration_s,
            "tokens_in": usage.prompt_tokens if usage else None,
            "tokens_in_cached": usage.cached_prompt_tokens if usage else None,
            "tokens_out": usage.completion_tokens if usage else None,
            "cost_usd": self.cost_usd,
            "http_retries": self.http_retries,
            "from_cache": self.from_cache,
            "report": list(a.report),
        }


def _sum_optional(values: Sequence[float | int | None]) -> Any:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


@dataclass(frozen=True)
class ImageDescription:
    """The outcome of stage A for one image (docs/protocol/pipeline.md §1.8, the fields the benchmark uses)."""

    image_id: str
    image_sha256: str
    success: bool
    #: The validated objects (dicts with exactly the item keys), None when the image failed.
    objects: list[dict[str, Any]] | None
    attempts: tuple[AttemptRecord, ...]
    max_attempts: int
    retry: int
    #: §1.5 warnings of the successful attempt (the paper's ``report_structured_description``).
    report: tuple[str, ...] = ()
    #: Set when the image itself could not be read or encoded (no request was made): the image fails
    #: with this message and the rest of the batch goes on.
    input_error: str | None = None

    @property
    def failed_attempts_total(self) -> int:
        """Every failed attempt, the last one of a failed image included (0 … max_attempts)."""
        return sum(not a.ok for a in self.attempts)

    @property
    def failed_attempts(self) -> int:
        """The paper's ``len(failed_structured_description_completions)``: failed attempts that were
        followed by a retry (0–3 with retry=3; a completely failed image has 3) — the per-image Ret."""
        if self.retry == -1:
            # Unlimited retries: every failure was followed by a retry except a last one that hit our cap.
            return self.failed_attempts_total - (0 if self.success else 1)
        return min(self.failed_attempts_total, self.retry)

    @property
    def num_described(self) -> int | None:
        return None if self.objects is None else len(self.objects)

    @property
    def duration_s(self) -> float | None:
        """The README "Time": the successful attempt's duration, None for a failed image."""
        return self.attempts[-1].duration_s if self.success else None

    @property
    def error(self) -> str | None:
        """The last attempt's failure reason when the image failed (the paper's ``report_error``);
        ``"image_unreadable"`` when the image could not be read."""
        if self.input_error is not None:
            return "image_unreadable"
        return None if self.success or not self.attempts else self.attempts[-1].error

    @property
    def error_message(self) -> str | None:
        if self.input_error is not None:
            return self.input_error
        return None if self.success or not self.attempts else self.attempts[-1].attempt.error_message

    @property
    def tokens_in(self) -> int | None:
        """Prompt tokens over all attempts (the paper attributes every attempt's usage to the image)."""
        return _sum_optional([a.usage.prompt_tokens if a.usage else None for a in self.attempts])

    @property
    def tokens_in_cached(self) -> int | None:
        return _sum_optional([a.usage.cached_prompt_tokens if a.usage else None for a in self.attempts])

    @property
    def tokens_out(self) -> int | None:
        return _sum_optional([a.usage.completion_tokens if a.usage else None for a in self.attempts])

    @property
    def cost_usd(self) -> float | None:
        """Cost over all attempts; None when no attempt has a known cost."""
        return _sum_optional([a.cost_usd for a in self.attempts])

    @property
    def http_retries(self) -> int:
        return sum(a.http_retries for a in self.attempts)

    @property
    def from_cache(self) -> bool:
        """True when every attempt was replayed from the response cache (no HTTP call)."""
        return bool(self.attempts) and all(a.from_cache for a in self.attempts)

    def as_row(self) -> dict[str, Any]:
        """One ``descriptions`` row (``protocol.columns`` names plus detail columns)."""
        return {
            "image_id": self.image_id,
            "image_sha256": self.image_sha256,
            "success": self.success,
            "objects": self.objects,
            "num_described": self.num_described,
            "attempts": len(self.attempts),
            "failed_attempts": self.failed_attempts,
            "failed_attempts_total": self.failed_attempts_total,
            "duration_s": self.duration_s,
            "tokens_in": self.tokens_in,
            "tokens_in_cached": self.tokens_in_cached,
            "tokens_out": self.tokens_out,
            "cost_usd": self.cost_usd,
            "http_retries": self.http_retries,
            "error": self.error,
            "error_message": self.error_message,
            "report": list(self.report),
            "attempt_log": [a.as_dict() for a in self.attempts],
        }


def _attempt_from_outcome(
    outcome: AttemptOutcome, settings: DescriptionSettings
) -> tuple[Attempt, list[dict[str, Any]] | None]:
    """Judge one attempt's outcome: model-side failure, invalid content, or the validated objects."""
    if outcome.error is not None:
        error = outcome.error
        return (
            Attempt.from_completion(
                error.completion, outcome.duration_s, error=error.reason, error_message=redact(error.message)
            ),
            None,
        )
    completion = outcome.completion
    assert completion is not None
    try:
        result = evaluate_completion(completion, settings)
    except InvalidDescription as exc:
        attempt = Attempt.from_completion(
            completion,
            outcome.duration_s,
            error=exc.reason,
            error_message=redact(exc.message),
            report=exc.report,
        )
        return attempt, None
    return Attempt.from_completion(completion, outcome.duration_s, report=result.report), result.objects


async def describe_image(
    chat: ChatClient,
    settings: DescriptionSettings,
    image: PreparedImage,
    *,
    image_id: str,
) -> ImageDescription:
    """The paper's content-retry loop for one prepared image (docs/protocol/pipeline.md §1.6).

    Raises :class:`~.errors.AuthenticationError`, :class:`~.errors.TransportRetriesExhausted` and
    :class:`~.errors.ConfigurationError` (not the model's fault, so not attempts).
    """
    require_supported(settings)  # scene description / decoupled task relevancy are not orchestrated here
    request = build_request(image, settings)
    params = settings.vlm_structured_description
    book = DescriptionAttempts.for_settings(settings)
    records: list[AttemptRecord] = []
    objects: list[dict[str, Any]] | None = None
    report: tuple[str, ...] = ()
    while book.can_retry:
        index = len(records)
        outcome = await chat.attempt(
            params, request.payload, endpoint=request.endpoint, cache_tag=CacheTag.image(image.sha256, index)
        )
        attempt, objects = _attempt_from_outcome(outcome, settings)
        book.record(attempt)
        cost = outcome.cost.total_usd if outcome.cost is not None else None
        records.append(AttemptRecord(index, attempt, outcome.http_retries, outcome.from_cache, cost))
        if attempt.ok:
            report = attempt.report
        else:
            log.info(
                "image %s: attempt %d/%d failed (%s)", image_id, index + 1, book.max_attempts, attempt.error
            )
    return ImageDescription(
        image_id=image_id,
        image_sha256=image.sha256,
        success=book.success,
        objects=objects if book.success else None,
        attempts=tuple(records),
        max_attempts=book.max_attempts,
        retry=settings.retry,
        report=report,
    )


# --------------------------------------------------------------------------------------------------
# Batches


ImageSource = str | os.PathLike[str] | bytes | PreparedImage
ImageInput = tuple[str, ImageSource]
"""(image id, image): a file path, the file's bytes, or an already prepared image."""


@dataclass(frozen=True)
class ProgressEvent:
    """Sent after each finished image."""

    done: int
    total: int
    succeeded: int
    failed: int
    image_id: str
    success: bool


class ProgressTracker:
    """Turns :class:`ProgressEvent` into "37/64 images (57.8%), 4.1 img/s, ETA 6 s" (rate since the
    tracker was created). Pass ``log`` to have each line logged too; use it as the ``progress`` callback.
    """

    def __init__(
        self,
        total: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.total = total
        self._clock = clock
        self._start = clock()
        self._log = log
        self.last: str = ""

    def update(self, event: ProgressEvent) -> str:
        elapsed = max(self._clock() - self._start, 1e-9)
        rate = event.done / elapsed
        percent = 100.0 * event.done / event.total if event.total else 100.0
        remaining = event.total - event.done
        eta = f"{remaining / rate:.0f} s" if rate > 0 else "?"
        self.last = f"{event.done}/{event.total} images ({percent:.1f}%), {rate:.1f} img/s, ETA {eta}"
        if self._log is not None:
            self._log(self.last)
        return self.last

    __call__ = update


class BatchIncomplete(TransportRetriesExhausted):
    """Some images could not be described because the endpoint kept failing at the transport level.

    Every other image finished (and its attempts are in the response cache, so a re-run resumes for
    free). ``completed``: their results; ``failed``: image id → the transport error.
    """

    def __init__(
        self, completed: list[ImageDescription], failed: Mapping[str, TransportRetriesExhausted]
    ) -> None:
        self.completed = completed
        self.failed = dict(failed)
        first = next(iter(self.failed.values()))
        super().__init__(
            f"{len(self.failed)} of {len(completed) + len(self.failed)} images could not be described "
            f"(transport failures; e.g. {first.message})",
            tries=first.tries,
            last=first.last,
        )


def _prepare(source: ImageSource, settings: DescriptionSettings) -> PreparedImage:
    if isinstance(source, PreparedImage):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        return prepare_image(
            bytes(source), settings.png_max_pixels, png_compression_level=settings.png_compression_level
        )
    return prepare_image(
        Path(source), settings.png_max_pixels, png_compression_level=settings.png_compression_level
    )


async def describe_images(
    chat: ChatClient,
    settings: DescriptionSettings,
    images: Sequence[ImageInput],
    *,
    progress: Callable[[ProgressEvent], Any] | None = None,
    max_prepared: int | None = None,
) -> list[ImageDescription]:
    """Describe every image, keeping up to the endpoint's concurrency limit of requests in flight
    across images. Results come back in input order.

    * An :class:`~.errors.AuthenticationError` (or a configuration error) cancels everything at once
      and propagates: a bad key is not worth another call.
    * Images whose transport retries ran out do not stop the others; afterwards
      :class:`BatchIncomplete` is raised with the finished results.

    ``max_prepared`` bounds how many prepared images are held in memory at once (default: twice the
    endpoint's concurrency).
    """
    require_supported(settings)
    ids = [image_id for image_id, _ in images]
    if len(set(ids)) != len(ids):
        raise ValueError("image ids must be unique within a batch (the paper keys metadata by image name)")
    endpoint = chat.resolve(settings.vlm_structured_description.api_endpoint)  # fail fast on config/key
    admission = asyncio.Semaphore(max_prepared or 2 * chat.limits(endpoint.name).concurrency)
    total = len(images)
    done = succeeded = 0

    async def one(image_id: str, source: ImageSource) -> ImageDescription:
        nonlocal done, succeeded
        async with admission:
            try:
                prepared = await asyncio.to_thread(_prepare, source, settings)
            except ImageError as exc:
                # A truncated, empty or missing image fails alone; the batch goes on (no request made).
                result = ImageDescription(
                    image_id=image_id,
                    image_sha256="",
                    success=False,
                    objects=None,
                    attempts=(),
                    max_attempts=settings.max_attempts,
                    retry=settings.retry,
                    input_error=redact(str(exc)),
                )
            else:
                result = await describe_image(chat, settings, prepared, image_id=image_id)
        done += 1
        succeeded += int(result.success)
        if progress is not None:
            progress(ProgressEvent(done, total, succeeded, done - succeeded, image_id, result.success))
        return result

    tasks = {
        asyncio.create_task(one(image_id, source), name=f"describe:{image_id}"): image_id
        for image_id, source in images
    }
    results: dict[str, ImageDescription] = {}
    transport_failures: dict[str, TransportRetriesExhausted] = {}
    pending = set(tasks)
    try:
        while pending:
            # React to the first fatal error at once, whichever image it comes from (a bad key must not
            # wait for slow images ahead of it in the list).
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for task in finished:
                error = task.exception()
                if error is None:
                    results[tasks[task]] = task.result()
                elif isinstance(error, TransportRetriesExhausted):
                    transport_failures[tasks[task]] = error
                else:
                    raise error
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    ordered = [results[i] for i in ids if i in results]
    if transport_failures:
        raise BatchIncomplete(ordered, transport_failures)
    return ordered
