"""The simulator's world model: recognising dataset images after re-encoding and down-scaling, the
description variants and their mapping back to GT instances, and the text helpers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vlm_gist_dagster.sim import UnknownImageError, load_world
from vlm_gist_dagster.sim import language as lang
from vlm_gist_dagster.sim.embeddings import HashedEmbedder
from vlm_gist_dagster.sim.world import normalize_prompt


@pytest.fixture(scope="module")
def world(sim_datasets):
    return load_world(sim_datasets)


def _encode(image: np.ndarray, ext: str, quality: int | None = None) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if quality else []
    ok, buf = cv2.imencode(ext, image, params)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("dataset", ["coco", "vlm_gist"])
def test_every_image_is_recognised_after_reencoding_and_downscaling(world, sim_datasets, dataset):
    """Clients re-encode and shrink images (docs/protocol/pipeline.md §1.2): every image of both datasets must
    still be identified, as JPEG quality 60, as PNG, and halved with INTER_AREA."""
    ds = sim_datasets[dataset]
    for row in ds.images.itertuples(index=False):
        expected = f"{dataset}/{row.image_id}"
        raw = Path(row.path).read_bytes()
        exact = world.identify(raw)
        assert (exact.image.key, exact.exact, exact.width, exact.height) == (
            expected,
            True,
            row.width,
            row.height,
        )

        image = cv2.imread(row.path, cv2.IMREAD_COLOR)
        half = cv2.resize(image, (row.width // 2, row.height // 2), interpolation=cv2.INTER_AREA)
        for data, size in (
            (_encode(image, ".jpg", 60), (row.width, row.height)),
            (_encode(image, ".png"), (row.width, row.height)),
            (_encode(half, ".jpg", 60), (row.width // 2, row.height // 2)),
            (_encode(half, ".png"), (row.width // 2, row.height // 2)),
        ):
            found = world.identify(data)
            assert found.image.key == expected
            assert not found.exact
            assert (found.width, found.height) == size


def test_unknown_images_are_rejected(world, sim_datasets):
    noise = np.random.default_rng(0).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    with pytest.raises(UnknownImageError, match="not in the simulator's datasets"):
        world.identify(_encode(noise, ".png"))
    # A crop of a known image is a different picture, not the image itself.
    row = sim_datasets["vlm_gist"].images.iloc[0]
    image = cv2.imread(row.path, cv2.IMREAD_COLOR)
    with pytest.raises(UnknownImageError):
        world.identify(_encode(image[: row.height // 2, : row.width // 3], ".jpg", 90))


def test_vlm_gist_variants_map_back_to_their_instance(world, sim_datasets):
    """Every description variant of every VLM-GIST instance, normalised as the client does, maps back
    to its own GT instance, and the first variant is the GT sentence itself."""
    checked = 0
    for image in (im for im in world.images.values() if im.dataset == "vlm_gist"):
        assert image.mode == "sentence"
        for inst, variants in zip(image.instances, image.variants(), strict=True):
            assert variants[0].description == inst.label
            for variant in variants:
                assert len(variant.description.split()) <= max(10, len(inst.label.split()))
                assert inst.index in image.instances_for_description(normalize_prompt(variant.description))
                checked += 1
    assert checked >= 1178  # at least one variant per GT instance (64 images, 1178 instances)


def test_coco_variants_name_the_class_and_are_unique_per_image(world):
    for image in (im for im in world.images.values() if im.dataset == "coco"):
        assert image.mode == "class"
        per_variant = list(zip(*image.variants(), strict=True)) if image.instances else []
        for variant_set in per_variant:
            texts = [normalize_prompt(v.description) for v in variant_set]
            assert len(set(texts)) == len(texts), image.key  # "differs from the other descriptions"
        for inst, variants in zip(image.instances, image.variants(), strict=True):
            for variant in variants:
                assert variant.object_name == inst.label
                assert inst.label in variant.description
                assert variant.description.split()[0] in ("a", "an", "another")
                assert image.instances_for_description(variant.description) == (inst.index,)


def test_prompt_fallback_matches_class_words_only(world):
    image = world.images["coco/000000037777"]  # GT classes include dining table, refrigerator, oven, chair
    candidates, exact = image.candidates_for_prompt("a shiny fridge")  # a synonym of refrigerator
    assert not exact
    assert [image.instances[i].label for i in candidates] == ["refrigerator"]
    assert image.candidates_for_prompt("a purple giraffe in the sky") == ((), False)


@pytest.mark.parametrize(
    ("sentence", "head"),
    [
        ("A braided money tree in a white pot standing on the floor.", "tree"),
        ("A striped cushion with red, yellow, and white patterns on the left side of the couch.", "cushion"),
        ("A green pack of white Tic Tac mints on the couch table.", "pack"),
        (
            "A black, concave transponder with a smooth, circular appearance on the couch table.",
            "transponder",
        ),
        ("An apple", "apple"),
    ],
)
def test_head_noun(sentence, head):
    assert lang.head_noun(sentence) == head


def test_shorten_sentence_keeps_ten_words_at_a_phrase_boundary():
    # 11 words; the last boundary word within the first 10 is "on" (index 9), then "standing" is
    # trailing filler: 7 words remain.
    assert (
        lang.shorten_sentence("A braided money tree in a white pot standing on the floor.")
        == "A braided money tree in a white pot"
    )
    # 9 words: only the period goes.
    assert (
        lang.shorten_sentence("A white cup filled with coffee on the table.")
        == "A white cup filled with coffee on the table"
    )


def test_definition_has_five_sentences_and_avoids_forbidden_words():
    text = lang.definition_for("sports ball")
    assert text.count(". ") == 4 and text.endswith(".")
    assert "sports ball" in text
    for word in ("item", "category", "context"):
        assert word not in text.lower()
    term, description = lang.parse_definition_item(
        '{\n    "object_name": "chair",\n    "description": "a red chair"\n}'
    )
    assert (term, description) == ("chair", "a red chair")


def test_hashed_embeddings_rank_related_words_above_unrelated():
    embedder = HashedEmbedder()
    pairs = [
        ("monitor", "tv", "banana"),
        ("couch", "sofa", "airplane"),
        ("tennis ball", "sports ball", "toaster"),
        ("smartphone", "cell phone", "kite"),
        ("a red wooden chair", "chair", "a blue car"),
        ("man", "person", "refrigerator"),
    ]
    for anchor, related, unrelated in pairs:
        a, r, u = embedder.embed([anchor, related, unrelated])
        assert a @ r > a @ u + 0.3, (anchor, related, unrelated)
    vectors = embedder.embed(["x", "a longer text"], dimensions=64)
    assert vectors.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), [1.0, 1.0])
