"""Tiny architectures with random weights, for ``--random-weights`` (tests and CPU benchmarks only).

Every family's real model class is built from a small config of the same architecture, so the whole
code path (preprocessing, the transformers forward pass, post-processing, encoding) runs without
downloading anything; the numbers it produces mean nothing. Tokenizers are built in-process as well:
a WordPiece vocabulary for the BERT text encoder of MM-Grounding-DINO whose special tokens keep the
ids of ``bert-base-uncased`` (the model looks for ``[CLS]`` 101, ``[SEP]`` 102, ``.`` 1012, ``?`` 1029),
and a byte-level BPE for SAM 3's CLIP text encoder. Never a silent fallback: the server only builds
these when started with ``--random-weights`` and reports ``"weights": "random"`` in ``/status``.
"""

from __future__ import annotations

import string
from typing import Any

__all__ = [
    "full_mm_grounding_dino",
    "full_sam2_video",
    "full_sam3",
    "tiny_bert_tokenizer",
    "tiny_clip_tokenizer",
    "tiny_florence2",
    "tiny_kosmos2",
    "tiny_mm_grounding_dino",
    "tiny_sam2_video",
    "tiny_sam3",
]

_BERT_SPECIALS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}
TINY_BERT_VOCAB = 2048


def tiny_bert_tokenizer() -> Any:
    """An uncased WordPiece tokenizer over single characters (every ASCII text tokenizes) whose special
    tokens have ``bert-base-uncased``'s ids."""
    from transformers import BertTokenizer

    chars = string.ascii_lowercase + string.digits
    pieces = list(chars + ",;:!'\"-()/&+*#%$@<>=[]_") + ["##" + c for c in chars]
    free = [i for i in range(TINY_BERT_VOCAB) if i not in _BERT_SPECIALS.values()]
    vocab = dict(_BERT_SPECIALS)
    vocab.update(zip(pieces, free, strict=False))
    vocab.update({f"[unused{i}]": i for i in free[len(pieces) :]})
    return BertTokenizer(vocab=vocab)


def tiny_mm_grounding_dino(seed: int = 0) -> Any:
    """MM-Grounding-DINO with a 4-stage Swin of width 16, one encoder and two decoder layers, 100 queries."""
    import torch
    from transformers import BertConfig, MMGroundingDinoConfig, MMGroundingDinoForObjectDetection, SwinConfig

    config = MMGroundingDinoConfig(
        # the typed SwinConfig lacks the backbone mixin's out_indices (transformers' typing gap)
        backbone_config=SwinConfig(  # type: ignore[call-arg]
            embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7, out_indices=[2, 3, 4]
        ),
        text_config=BertConfig(
            vocab_size=TINY_BERT_VOCAB,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,  # the class ties decoder heads across layers: it needs at least two
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=100,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    torch.manual_seed(seed)
    return MMGroundingDinoForObjectDetection(config).eval()


def tiny_sam2_video(seed: int = 0, image_size: int = 256) -> Any:
    """SAM 2 video model with a 4-stage Hiera of width 8 and 128-wide heads, at ``image_size`` pixels.

    The memory attention's key projection is fixed at 64 channels and object pointers are split into
    64-wide memory tokens, so the head width must be a multiple of 64 above it (128)."""
    import torch
    from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VideoModel, Sam2VisionConfig

    s = image_size
    hidden = 128
    config = Sam2VideoConfig(
        vision_config=Sam2VisionConfig(
            backbone_config=Sam2HieraDetConfig(
                hidden_size=8,
                embed_dim_per_stage=[8, 16, 32, 64],
                num_attention_heads_per_stage=[1, 1, 1, 1],
                blocks_per_stage=[1, 2, 1, 1],
                global_attention_blocks=[2],  # not a stage-change block (those pool the window)
                window_size_per_stage=[8, 4, 4, 4],
                image_size=[s, s],
            ),
            backbone_channel_list=[64, 32, 16, 8],
            fpn_hidden_size=hidden,
            backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
        ),
        prompt_encoder_config=dict(hidden_size=hidden, image_size=s),
        mask_decoder_config=dict(
            hidden_size=hidden, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32
        ),
        image_size=s,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=128,
        memory_attention_rope_feat_sizes=[s // 16, s // 16],
        memory_encoder_hidden_size=hidden,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=64,
        memory_fuser_num_layers=1,
    )
    torch.manual_seed(seed)
    model = Sam2VideoModel(config).eval()
    # A random object-score head calls about half of the objects occluded, and SAM 2 then blanks their
    # masks: every object is made visible so that masks (random shapes) go through the whole path.
    with torch.no_grad():
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(10.0)
    return model


TINY_CLIP_VOCAB = 512


def tiny_clip_tokenizer() -> Any:
    """A CLIP-style byte-level BPE (256 byte symbols, their end-of-word forms, a few merges)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for sym in symbols:
        vocab[sym] = len(vocab)
    for sym in symbols:
        vocab[sym + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def tiny_sam3(seed: int = 0, image_size: int = 224, vocab_size: int | None = None) -> Any:
    """SAM 3 with a 2-layer ViT of width 32, 1-layer DETR encoder/decoder (20 queries) and CLIP text."""
    import torch
    from transformers import CLIPTextConfig, Sam3Config, Sam3Model, Sam3VisionConfig, Sam3ViTConfig

    s = image_size
    grid = s // 14
    vocab = vocab_size or (2 * 256 + 2)
    config = Sam3Config(
        vision_config=Sam3VisionConfig(
            backbone_config=Sam3ViTConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=s,
                patch_size=14,
                window_size=8,
                global_attn_indexes=[1],
                pretrain_image_size=s,
            ),
            fpn_hidden_size=32,
            backbone_feature_sizes=[[grid * 4] * 2, [grid * 2] * 2, [grid] * 2],
        ),
        text_config=CLIPTextConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            projection_dim=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
            bos_token_id=vocab - 2,
            eos_token_id=vocab - 1,
            pad_token_id=vocab - 1,
        ),
        geometry_encoder_config=dict(
            hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64
        ),
        detr_encoder_config=dict(hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_decoder_config=dict(
            hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64, num_queries=20
        ),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2),
    )
    torch.manual_seed(seed)
    return Sam3Model(config).eval()


def _byte_level_vocab(specials: list[str]) -> dict[str, int]:
    from tokenizers import pre_tokenizers

    vocab = {token: i for i, token in enumerate(specials)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
    return vocab


#: the task and location tokens of Florence-2's tokenizer that its post-processor parses
FLORENCE_EXTRA_TOKENS = [f"<loc_{i}>" for i in range(1000)] + [
    "<od>", "</od>", "<ocr>", "</ocr>", "<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>",
    "<grounding>", "</grounding>", "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>",
    "<region_to_desciption>", "</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>",
]  # fmt: skip
FLORENCE_PARSE_TASKS = {
    "ocr": {"AREA_THRESHOLD": 0.0},
    "phrase_grounding": {"banned_grounding_tokens": []},
    "pure_text": {},
    "description_with_bboxes": {},
    "description_with_polygons": {},
    "polygons": {},
    "bboxes": {},
    "description_with_bboxes_or_polygons": {},
}


def tiny_florence2(seed: int = 0, image_size: int = 64) -> tuple[Any, Any]:
    """Florence-2 with a 4-stage DaViT of width 8–64 and a one-layer BART, and its processor: a
    byte-level BPE with ``<image>``, the 1,000 ``<loc_…>`` tokens and the task tokens."""
    import torch
    from transformers import (
        BartConfig,
        BartTokenizer,
        CLIPImageProcessorPil,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
        Florence2VisionConfig,
    )

    tokenizer = BartTokenizer(
        vocab=_byte_level_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]),
        merges=[],
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.add_tokens(FLORENCE_EXTRA_TOKENS)
    config = Florence2Config(
        vision_config=Florence2VisionConfig(
            depths=[1, 1, 1, 1],
            embed_dim=[8, 16, 32, 64],
            num_heads=[1, 1, 2, 2],
            num_groups=[1, 1, 2, 2],
            window_size=2,
            projection_dim=32,
        ),
        # a generation kwarg the typed BartConfig omits (transformers' typing gap)
        text_config=BartConfig(  # type: ignore[call-arg]
            vocab_size=len(tokenizer),
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=1100,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.eos_token_id,
            forced_bos_token_id=tokenizer.bos_token_id,
        ),
        image_token_id=tokenizer.image_token_id,
    )
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessorPil(
        size={"height": image_size, "width": image_size},
        do_center_crop=False,
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    with torch.inference_mode():  # the processor needs as many <image> tokens as the vision tower makes
        probe = model.get_image_features(pixel_values=torch.zeros(1, 3, image_size, image_size))
    # read by Florence2Processor, not declared on the class (transformers' typing gap)
    image_processor.image_seq_length = int(probe.pooler_output.shape[1])  # type: ignore[attr-defined]
    processor = Florence2Processor(
        image_processor=image_processor, tokenizer=tokenizer, post_processor_config=FLORENCE_PARSE_TASKS
    )
    return model, processor


def tiny_kosmos2(seed: int = 0, image_size: int = 56) -> tuple[Any, Any]:
    """Kosmos-2 with a 1-layer ViT and a 1-layer text decoder of width 32, 64 latent queries, and its
    processor (a byte-level BPE; the processor adds Kosmos-2's tag and patch-index tokens itself)."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        Kosmos2Config,
        Kosmos2ForConditionalGeneration,
        Kosmos2Processor,
        RobertaTokenizer,
    )

    tokenizer = RobertaTokenizer(
        vocab=_byte_level_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]), merges=[]
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = Kosmos2Processor(image_processor=image_processor, tokenizer=tokenizer)
    config = Kosmos2Config(
        text_config=dict(
            vocab_size=len(processor.tokenizer),
            embed_dim=32,
            layers=1,
            ffn_dim=64,
            attention_heads=2,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image_size,
        ),
        latent_query_num=64,
    )
    torch.manual_seed(seed)
    return Kosmos2ForConditionalGeneration(config).eval(), processor


# -- the real architectures' sizes with random weights (``--random-size full``: GPU speed benchmarks) ----


def full_mm_grounding_dino(seed: int = 0) -> Any:
    """MM-Grounding-DINO large: Swin-L (192 wide, depths 2-2-18-2, window 12), BERT-base, 900 queries.

    Its vocabulary is BERT's (30,522); the tiny tokenizer's ids are a subset, and its character-level
    tokens fill the 256 text positions sooner than real word pieces do."""
    import torch
    from transformers import BertConfig, MMGroundingDinoConfig, MMGroundingDinoForObjectDetection, SwinConfig

    config = MMGroundingDinoConfig(
        # the typed SwinConfig lacks the backbone mixin's out_indices (transformers' typing gap)
        backbone_config=SwinConfig(  # type: ignore[call-arg]
            embed_dim=192,
            depths=[2, 2, 18, 2],
            num_heads=[6, 12, 24, 48],
            window_size=12,
            image_size=384,
            out_indices=[2, 3, 4],
        ),
        text_config=BertConfig(),
    )
    torch.manual_seed(seed)
    return MMGroundingDinoForObjectDetection(config).eval()


def full_sam2_video(seed: int = 0) -> Any:
    """SAM 2.1 Hiera-L (sam2.1_hiera_l.yaml: 144 wide, 2-6-36-4 blocks, global blocks 23/33/43) at 1024 px."""
    import torch
    from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VideoModel, Sam2VisionConfig

    config = Sam2VideoConfig(
        vision_config=Sam2VisionConfig(
            backbone_config=Sam2HieraDetConfig(
                hidden_size=144,
                embed_dim_per_stage=[144, 288, 576, 1152],
                num_attention_heads_per_stage=[2, 4, 8, 16],
                blocks_per_stage=[2, 6, 36, 4],
                global_attention_blocks=[23, 33, 43],
                window_size_per_stage=[8, 4, 16, 8],
            ),
            backbone_channel_list=[1152, 576, 288, 144],
        ),
    )
    torch.manual_seed(seed)
    model = Sam2VideoModel(config).eval()
    with torch.no_grad():  # every object visible, as in tiny_sam2_video
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(10.0)
    return model


def full_sam3(seed: int = 0) -> Any:
    """SAM 3 at its real size (transformers' default ``Sam3Config``: ViT-L-like 32 layers at 1008 px)."""
    import torch
    from transformers import Sam3Config, Sam3Model

    torch.manual_seed(seed)
    return Sam3Model(Sam3Config()).eval()
