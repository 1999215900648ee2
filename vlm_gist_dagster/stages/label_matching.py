"""Stage D, label matching, for one (model, dataset) pair (docs/protocol/evaluation.md §1).

The definitions LLM writes a definition for every text missing from the shared definitions cache of
its service (``data/cache/definitions/<service>.json``, the paper's flat key → text format, merged under
a lock by concurrent partitions: :mod:`.definitions_store`). As in the paper, that cache starts from the
paper's published definitions (its 357 COCO targets) when the service is the one that wrote them,
OpenAI's API (setting ``initial_definitions``); the embeddings endpoint (or a local model)
embeds the batch; ``protocol.label_matching`` scores and matches. Every detection keeps a row; the
ones whose match is not a dataset target have ``dataset_match = None`` and are dropped before evaluation
(not counted as false positives, docs/protocol/evaluation.md gotcha 1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pandas as pd

from ..clients.chat import CacheTag, ChatClient
from ..clients.errors import ResponseError
from ..protocol import label_matching as lm
from ..protocol.completions import build_payload
from ..protocol.settings import LabelMatchingSettings
from .definitions_store import DefinitionsStore
from .services import Services
from .tables import LABEL_MATCHES

#: Column names of the table (dtypes and meaning: ``stages.tables.LABEL_MATCHES``).
LABEL_MATCH_COLUMNS = LABEL_MATCHES.names

#: Attempts per definition. The paper retries a failed definition without limit (§1.5); we stop here
#: and fail the partition (a later run resumes from the caches).
MAX_DEFINITION_ATTEMPTS = 4


class DefinitionError(ResponseError):
    """A definition could not be obtained after all attempts."""


async def _define(chat: ChatClient, request: lm.DefinitionRequest) -> str:
    params = request.llm
    payload = build_payload(params, request.messages, "text")
    last = "no attempt"
    for attempt in range(MAX_DEFINITION_ATTEMPTS):
        tag = CacheTag.definition(request.item.cache_key, attempt)
        outcome = await chat.attempt(params, payload, cache_tag=tag)
        if outcome.error is None and outcome.completion is not None and outcome.completion.text.strip():
            return outcome.completion.text  # stored verbatim, as the paper does
        last = outcome.error.reason if outcome.error is not None else "empty_text"
    raise DefinitionError(
        f"no definition for {request.item.text[:60]!r} after {MAX_DEFINITION_ATTEMPTS} attempts ({last})"
    )


def _targets(labels: list[str] | None) -> tuple[str, ...] | None:
    return None if labels is None else tuple(labels)


def label_sets(
    validations: pd.DataFrame,
    descriptions: pd.DataFrame,
    ground_truth: pd.DataFrame,
    image_ids: list[str],
    per_image_targets: bool,
) -> tuple[list[lm.LabelSet], dict[str, pd.DataFrame]]:
    """One label set per image (every image of the dataset, in dataset order; images without kept
    detections are skipped by the protocol). A detection validated to another object_name takes that
    instance's description (docs/protocol/pipeline.md §5.5 step 6)."""
    kept = validations[validations["kept"].astype(bool)] if len(validations) else validations
    groups = {k: g.sort_values("detection_index") for k, g in kept.groupby("image_id", sort=False)}
    objects = {
        i: {o["object_name"]: o.get("description") for o in objs}
        for i, objs, ok in zip(descriptions["image_id"], descriptions["objects"], descriptions["success"])
        if ok and objs is not None and not isinstance(objs, float)
    }
    gt_labels = ground_truth.groupby("image_id", sort=False)["label"].apply(list).to_dict()
    sets = []
    for image_id in image_ids:
        group = groups.get(image_id)
        if group is None:
            sets.append(
                lm.LabelSet(
                    image_id, (), None, _targets(gt_labels.get(image_id)) if per_image_targets else None
                )
            )
            continue
        labels = [str(v) for v in group["validated_object_name"]]
        own = objects.get(image_id, {})
        descs = [
            own.get(label, d) if label != o else d
            for label, o, d in zip(labels, group["object_name"], group["description"])
        ]
        descs = [None if (d is None or (isinstance(d, float))) else str(d) for d in descs]
        has_descriptions = any(d is not None for d in descs)
        sets.append(
            lm.LabelSet(
                image_id,
                tuple(labels),
                tuple(descs) if has_descriptions else None,
                _targets(gt_labels.get(image_id)) if per_image_targets else None,
            )
        )
    return sets, groups


async def _define_missing(
    services: Services, store: DefinitionsStore, requests: list[lm.DefinitionRequest], write: bool
) -> tuple[lm.DefinitionsCache, dict[str, str]]:
    """Ask the LLM for every requested definition, then merge them into the shared file (first writer
    wins, under its lock) when ``write``; returns (the definitions to match with, the new ones)."""
    async with services.chat_client() as chat:
        texts = await asyncio.gather(*(_define(chat, r) for r in requests))
    new = {r.item.cache_key: t for r, t in zip(requests, texts, strict=True)}
    if write:
        return await asyncio.to_thread(store.merge, new), new
    return store.read().merged(new), new


async def _embed(services: Services, batch: list[str]) -> lm.EmbeddingTable:
    client = services.embeddings_client()
    try:
        vectors = await client.embed(batch)
    finally:
        close = getattr(client, "aclose", None)
        if close is not None:
            await close()
    return lm.EmbeddingTable(batch, vectors)


def run_label_matches(
    validations: pd.DataFrame,
    descriptions: pd.DataFrame,
    ground_truth: pd.DataFrame,
    image_ids: list[str],
    settings: LabelMatchingSettings,
    services: Services,
    *,
    log: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``(label_matches, summary)``: one row per kept detection, plus counts for metadata.

    Definitions come from the definitions file of the service that writes them
    (:meth:`Services.definitions_store`); the missing ones are generated and merged into it before
    matching, so the result is what a re-run from the file gives even when another partition defined the
    same texts at the same time."""
    sets, groups = label_sets(
        validations, descriptions, ground_truth, image_ids, settings.use_per_set_targets
    )
    active, skipped = lm.partition_label_sets(sets, settings)
    store = services.definitions_store(settings.llm.api_endpoint, settings.initial_definitions, progress=log)
    cached = store.read()
    items = lm.definition_items(active, settings)
    requests = lm.definition_requests(cached.missing(items), settings)
    from_paper = sum(item.cache_key in store.initial for item in items) if store.initial is not None else 0
    if log:
        if store.initial is not None:
            log(f"label matching: starting from the paper's {len(store.initial)} published definitions")
        elif settings.initial_definitions == "paper":
            identity = services.endpoint_identity(settings.llm.api_endpoint)
            log(
                f"label matching: the paper's definitions are not used, they were written by OpenAI's API "
                f"and the definitions here come from {identity} (initial_definitions: paper_any_service "
                "uses them anyway)"
            )
        log(
            f"label matching: {len(active)} images, {len(cached)} cached definitions "
            f"({from_paper} of the {len(items)} needed from the paper's), {len(requests)} to generate"
        )

    async def main() -> tuple[lm.DefinitionsCache, dict[str, str], lm.EmbeddingTable | None]:
        definitions: lm.DefinitionsCache = cached
        new: dict[str, str] = {}
        if requests:
            definitions, new = await _define_missing(services, store, requests, settings.definitions_write)
        if not active:
            return definitions, new, None
        return definitions, new, await _embed(services, lm.embedding_batch(active, definitions, settings))

    definitions, new, table = asyncio.run(main())
    result = (
        lm.match_label_sets(active, definitions, table, settings)
        if table is not None
        else lm.LabelMatchingResult((), tuple(skipped))
    )
    out = label_match_table(result, groups)
    adopted = sum(definitions[key] != text for key, text in new.items())
    summary = {
        "images_matched": len(result.sets),
        "images_skipped": len(result.skipped),
        "definitions_generated": len(new),
        "definitions_cached": len(definitions) - len(new),
        "definitions_from_another_partition": adopted,
        "definitions_from_paper": from_paper,
        "accepted": int(out["dataset_match"].notna().sum()),
        "rejected": int(out["dataset_match"].isna().sum()),
        "mapping_rules_applied": int(out["mapping_rule_applied"].fillna(False).astype(bool).sum()),
        "per_image": {s.identifier: (s.accepted, s.rejected) for s in result.sets},
    }
    return out, summary


def label_match_table(result: lm.LabelMatchingResult, groups: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per kept detection of the matched sets, then the detections of skipped sets."""
    rows: list[dict[str, Any]] = []
    for label_set in result.sets:
        group = groups[label_set.identifier]
        for match, source in zip(label_set.detections, group.to_dict("records"), strict=True):
            rows.append(
                {
                    "image_id": label_set.identifier,
                    "detection_index": source["detection_index"],
                    "label": match.label,
                    "description": match.description,
                    "label_norm": match.label_norm,
                    "best_target": match.best_target,
                    "score": match.score,
                    "match": match.match,
                    "mapping_rule_applied": match.mapping_rule_applied,
                    "dataset_match": match.dataset_match,
                    "levenshtein_match": match.levenshtein_match,
                    "skipped": False,
                    **{k: source[k] for k in ("confidence", "x", "y", "w", "h", "mask")},
                }
            )
    for skip in result.skipped:
        # Skipped images keep their predictions unmatched (docs/protocol/evaluation.md gotcha 23); only images without kept
        # detections are skipped here, so there is nothing to keep, except per-image sets without GT.
        group = groups.get(skip.identifier)
        if group is None:
            continue
        for source in group.to_dict("records"):
            rows.append(
                {
                    "image_id": skip.identifier,
                    "detection_index": source["detection_index"],
                    "label": source["validated_object_name"],
                    "description": source["description"],
                    "dataset_match": source["validated_object_name"],
                    "skipped": True,
                    **{k: source[k] for k in ("confidence", "x", "y", "w", "h", "mask")},
                }
            )
    return LABEL_MATCHES.from_rows(rows)
