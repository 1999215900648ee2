"""``vlm-gist vision-serve``: the NimbRo Vision Servers HTTP API over Hugging Face transformers models.

One server process serves one model family (``--family``) at a time and at most one loaded model,
as the paper authors' Docker servers do, with the same routes, payloads, responses, Bearer auth,
flavour names and error codes (README, "Run stage B on your own GPU", lists them and every deliberate difference):

============================  =====================================================================
family                        models (flavour → Hugging Face model id: :data:`FLAVORS` of each module)
============================  =====================================================================
``mmgroundingdino``           MM-Grounding-DINO tiny / base / large / large_zeroshot, LLMDet tiny /
                              base / large (all MM-Grounding-DINO architectures)
``sam2_realtime``             SAM 2.1 Hiera tiny / small / base / large, tracking frame after frame
                              (``/update`` then ``/infer``)
``sam3``                      SAM 3 concept segmentation: text prompts → boxes, scores, masks (new)
``florence2``                 Florence-2 base / large / base_ft / large_ft
``kosmos2``                   Kosmos-2 patch14-224
============================  =====================================================================

The package imports nothing from Dagster; torch and transformers come with the optional extra
``vision`` (``pip install -e '.[vision]'``) and are imported only when a server starts, so the rest of
the project (and ``vlm-gist vision-serve --help``) works without them.
"""

from __future__ import annotations

FAMILIES: tuple[str, ...] = ("mmgroundingdino", "sam2_realtime", "sam3", "florence2", "kosmos2")

#: Default port per family: the pipeline's client defaults (``settings/vision_servers.json``), so a
#: server started without ``--port`` is where the benchmark looks for it; sam3 :9005 is our choice.
DEFAULT_PORTS: dict[str, int] = {
    "mmgroundingdino": 9000,
    "sam2_realtime": 9001,
    "florence2": 9003,
    "kosmos2": 9004,
    "sam3": 9005,
}

#: The environment variable the real servers read their Bearer token from (``--token`` overrides it).
TOKEN_ENV = "NIMBRO_VISION_SERVER_TOKEN"

__all__ = ["DEFAULT_PORTS", "FAMILIES", "TOKEN_ENV"]
