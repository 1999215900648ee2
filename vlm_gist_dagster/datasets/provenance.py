"""Where a dataset directory came from: the downloads leave a small ``vlm_gist_download.json`` next to
the data, so that tables and plots can say which dataset they were computed on (the paper's "COCO
minival (subset)" of 500 images, or a local copy of 32 images) instead of assuming it.

>>> heading("coco", images=32, root=Path("/data/coco_val2017_32"), provenance=None)
'COCO, local copy coco_val2017_32: 32 images'
>>> heading("coco", images=500, root=Path("data/datasets/coco_500"),
...         provenance=DatasetProvenance("coco", "COCO val2017", images=500, selection="the 500 lowest image ids"))
'COCO minival (subset): 500 images'
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

#: The file a download writes into the dataset directory it created.
PROVENANCE_FILE = "vlm_gist_download.json"

#: The paper's names of the datasets, used only for data that our downloads fetched from the paper's
#: sources (a local copy can hold any subset).
PAPER_TITLES: dict[str, str] = {"coco": "COCO minival (subset)", "vlm_gist": "VLM-GIST"}
#: Short names for any other copy.
SHORT_TITLES: dict[str, str] = {"coco": "COCO", "vlm_gist": "VLM-GIST"}
#: Images of the paper's datasets (COCO: the 500 lowest val2017 ids; VLM-GIST: the published export).
PAPER_IMAGES: dict[str, int] = {"coco": 500, "vlm_gist": 64}


@dataclass(frozen=True)
class DatasetProvenance:
    """What a download fetched: ``dataset`` name, ``source`` (human-readable), ``url``, number of
    ``images`` written, ``selection`` (e.g. "the 500 lowest image ids"), ``downloaded_at`` (UTC, ISO)."""

    dataset: str
    source: str
    url: str | None = None
    images: int | None = None
    selection: str | None = None
    downloaded_at: str | None = None


def write_provenance(root: Path, provenance: DatasetProvenance) -> Path:
    """Write ``root/vlm_gist_download.json`` (``downloaded_at`` filled in when empty)."""
    if provenance.downloaded_at is None:
        stamp = datetime.now(UTC).replace(microsecond=0).isoformat()
        provenance = DatasetProvenance(**{**asdict(provenance), "downloaded_at": stamp})
    path = Path(root) / PROVENANCE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(provenance), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_provenance(root: Path) -> DatasetProvenance | None:
    """The provenance a download left in ``root``, or None (a local copy, or an unreadable file)."""
    try:
        raw = json.loads((Path(root) / PROVENANCE_FILE).read_text())
        fields = DatasetProvenance.__dataclass_fields__
        return DatasetProvenance(**{k: v for k, v in raw.items() if k in fields})
    except (OSError, ValueError, TypeError):
        return None


def heading(
    dataset: str, *, images: int | None, root: Path | None, provenance: DatasetProvenance | None
) -> str:
    """A table heading that names the data actually used.

    The paper's title ("COCO minival (subset)") only for what our download fetched with the paper's
    selection and size; anything else is "<dataset>, local copy <directory name>". The image count is
    always given.
    """
    count = f": {images} images" if images is not None else ""
    is_paper_data = (
        provenance is not None
        and provenance.dataset == dataset
        and dataset in PAPER_TITLES
        and (images is None or images == PAPER_IMAGES.get(dataset))
    )
    if is_paper_data:
        return PAPER_TITLES[dataset] + count
    title = SHORT_TITLES.get(dataset, dataset)
    if provenance is not None and provenance.dataset == dataset:
        return f"{title}, {provenance.selection or 'download'}{count}"
    where = f", local copy {Path(root).name}" if root is not None else ""
    return f"{title}{where}{count}"
