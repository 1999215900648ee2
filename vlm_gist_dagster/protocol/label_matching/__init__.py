"""Stage D of the benchmark: label matching, as pure functions (docs/protocol/evaluation.md §1, gotchas §9,
docs/protocol/pipeline.md §8). No network: these functions build the definition requests and the embedding batch
and interpret the results; the clients send them.

One batch (e.g. one model × dataset partition)::

    from vlm_gist_dagster.protocol import label_matching as lm

    settings = lm.as_settings(settings)   # a LabelMatchingSettings, or the paper's JSON mapping validated
    sets     = [lm.LabelSet("00001.jpg", labels, descriptions, targets=gt_labels_or_None), ...]
    cache    = lm.DefinitionsCache.read(path)
    requests = lm.definition_requests(cache.missing(lm.definition_items(sets, settings)), settings)
    cache    = cache.updated({r.item.cache_key: text for r, text in zip(requests, completions)})
    texts    = lm.embedding_batch(sets, cache, settings)                # wire-ready, request order
    table    = lm.EmbeddingTable(texts, vectors)                         # vectors in input order
    result   = lm.match_label_sets(sets, cache, table, settings)
    result.sets[i].detections[j].dataset_match   # matched dataset target, or None (dropped)
    result.skipped                               # images left unmatched, predictions kept as they are

COCO mode matches against ``dataset_targets + augmented_targets`` from the settings and keeps only
dataset targets (after mapping rules). Per-image mode (``use_per_set_targets``, the VLM-GIST dataset)
matches each image against its own GT labels; nothing is ever rejected there.
"""

from .definitions import (
    DefinitionItem,
    DefinitionRequest,
    DefinitionsCache,
    DefinitionsCacheError,
    MissingDefinitionsError,
    definition_items,
    definition_request,
    definition_requests,
    detection_definition_item,
    lookup_definitions,
    target_definition_item,
)
from .embeddings import (
    EmbeddingBatch,
    EmbeddingTable,
    EmptyEmbeddingTextError,
    MissingEmbeddingsError,
    as_embedding_table,
    embedding_batch,
    embedding_batch_groups,
    embedding_input,
)
from .label_sets import (
    LabelSet,
    LabelSetError,
    SkippedLabelSet,
    current_dataset_targets,
    current_targets,
    matching_targets,
    partition_label_sets,
)
from .matching import (
    DetectionMatch,
    LabelMatchingResult,
    LabelSetResult,
    apply_mapping_rules,
    best_target_indices,
    dataset_filter,
    levenshtein_matches,
    match_label_sets,
    score_matrix,
)
from .normalization import (
    NormalizationFallbackWarning,
    Normalized,
    cache_key,
    collapse_whitespace,
    definition_norm,
    desc_norm_for_definition,
    desc_norm_for_embedding,
    label_norm,
    normalize_definition,
    normalize_description_for_definition,
    normalize_description_for_embedding,
    normalize_label,
    strip_label_number,
)
from .prompts import (
    DEFINITION_PROMPT_ITEM,
    DEFINITION_PROMPT_LABEL,
    DEFINITION_PROMPT_SYSTEM,
    DefinitionPrompt,
    definition_prompt,
)
from .settings import (
    HungarianAssignmentUnsupportedError,
    LabelMatchingSettings,
    LabelMatchingSettingsError,
    SettingsLike,
    as_settings,
    check_assignment_supported,
)

__all__ = [
    "DEFINITION_PROMPT_ITEM",
    "DEFINITION_PROMPT_LABEL",
    "DEFINITION_PROMPT_SYSTEM",
    "DefinitionItem",
    "DefinitionPrompt",
    "DefinitionRequest",
    "DefinitionsCache",
    "DefinitionsCacheError",
    "DetectionMatch",
    "EmbeddingBatch",
    "EmbeddingTable",
    "EmptyEmbeddingTextError",
    "HungarianAssignmentUnsupportedError",
    "LabelMatchingResult",
    "LabelMatchingSettings",
    "LabelMatchingSettingsError",
    "LabelSet",
    "LabelSetError",
    "LabelSetResult",
    "MissingDefinitionsError",
    "MissingEmbeddingsError",
    "NormalizationFallbackWarning",
    "Normalized",
    "SettingsLike",
    "SkippedLabelSet",
    "apply_mapping_rules",
    "as_embedding_table",
    "as_settings",
    "best_target_indices",
    "cache_key",
    "check_assignment_supported",
    "collapse_whitespace",
    "current_dataset_targets",
    "current_targets",
    "dataset_filter",
    "definition_items",
    "definition_norm",
    "definition_prompt",
    "definition_request",
    "definition_requests",
    "desc_norm_for_definition",
    "desc_norm_for_embedding",
    "detection_definition_item",
    "embedding_batch",
    "embedding_batch_groups",
    "embedding_input",
    "label_norm",
    "levenshtein_matches",
    "lookup_definitions",
    "match_label_sets",
    "matching_targets",
    "normalize_definition",
    "normalize_description_for_definition",
    "normalize_description_for_embedding",
    "normalize_label",
    "partition_label_sets",
    "score_matrix",
    "strip_label_number",
    "target_definition_item",
]
