"""Two label-matching partitions at once share one definitions file (issue 13 item 4).

Two processes match the same detections against one data directory, with definition LLMs that write
*different* texts for the same keys (the stub server names the model in each definition), and both
reach the merge only once both have generated every definition (a barrier), the worst interleaving.
Neither may fail, the file must hold one writer's text per key (the first to merge wins), and each
process's table must be what a re-run from the file gives, i.e. neither changed the other's result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd

from ..stubs import MARK, StubServer, openai_route

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    import pandas as pd

    from vlm_gist_dagster.protocol.settings import load_label_matching_settings
    from vlm_gist_dagster.stages import definitions_store
    from vlm_gist_dagster.stages.label_matching import run_label_matches
    from vlm_gist_dagster.stages.services import Services

    name, model, data_dir, stub_url, barrier, out, wait = sys.argv[1:8]
    if wait == "barrier":
        merge = definitions_store.DefinitionsStore.merge

        def merge_after_both(self, new):
            # Both processes have generated their definitions before either merges.
            Path(barrier, name).touch()
            deadline = time.monotonic() + 120
            while len(list(Path(barrier).iterdir())) < 2:
                if time.monotonic() > deadline:
                    raise TimeoutError("the other process never reached the merge")
                time.sleep(0.01)
            return merge(self, new)

        definitions_store.DefinitionsStore.merge = merge_after_both

    settings = load_label_matching_settings(Path(sys.argv[8]))
    llm = settings.llm.model_copy(update={"model_name": model})
    settings = settings.model_copy(update={"llm": llm})
    frames = json.loads(Path(sys.argv[9]).read_text())
    env = {"OPENAI_API_KEY": "stub-key", "VLM_GIST_ENDPOINT_URL_OPENAI": stub_url}
    table, summary = run_label_matches(
        pd.DataFrame(frames["validations"]),
        pd.DataFrame(frames["descriptions"]),
        pd.DataFrame(frames["ground_truth"]),
        frames["image_ids"],
        settings,
        Services(env=env, data_dir=Path(data_dir), concurrency=4),
    )
    table.drop(columns=["mask"]).to_json(out, orient="records")
    Path(out + ".summary").write_text(json.dumps({k: v for k, v in summary.items() if k != "per_image"}))
    """
)

DETECTIONS = {
    "img_a": [("red cup", "a red cup on the table"), ("wooden table", "a wooden table"), ("chair", None)],
    "img_b": [("laptop", "an open laptop"), ("coffee mug", "a white coffee mug")],
}
GROUND_TRUTH = {"img_a": ["cup", "dining table", "chair"], "img_b": ["laptop", "cup", "keyboard"]}


def frames() -> dict:
    validations, descriptions, ground_truth = [], [], []
    for image_id, detections in DETECTIONS.items():
        objects = []
        for index, (label, description) in enumerate(detections):
            validations.append(
                {
                    "image_id": image_id,
                    "detection_index": index,
                    "kept": True,
                    "object_name": label,
                    "validated_object_name": label,
                    "description": description,
                    "confidence": 0.5 + 0.1 * index,
                    "x": 0.1,
                    "y": 0.1,
                    "w": 0.2,
                    "h": 0.2,
                    "mask": None,
                }
            )
            objects.append({"object_name": label, "description": description})
        descriptions.append({"image_id": image_id, "objects": objects, "success": True})
        ground_truth += [{"image_id": image_id, "label": label} for label in GROUND_TRUTH[image_id]]
    return {
        "validations": validations,
        "descriptions": descriptions,
        "ground_truth": ground_truth,
        "image_ids": list(DETECTIONS),
    }


def run_children(tmp_path: Path, stub: StubServer, names: list[str], data_dir: Path, wait: str) -> dict:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    inputs = tmp_path / "frames.json"
    inputs.write_text(json.dumps(frames()))
    barrier = tmp_path / f"barrier_{wait}"
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    settings = REPO / "settings" / "label_matching" / "vlm_gist.json"
    processes = {}
    for name in names:
        out = tmp_path / f"{name}_{wait}.json"
        args = [name, f"lm/{name}", data_dir, stub.url, barrier, out, wait, settings, inputs]
        processes[name] = (
            subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env, stderr=subprocess.PIPE),
            out,
        )
    results = {}
    for name, (process, out) in processes.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name} failed:\n{stderr.decode()[-3000:]}"
        results[name] = (
            pd.read_json(out, orient="records"),
            json.loads(Path(str(out) + ".summary").read_text()),
        )
    return results


def test_two_concurrent_partitions_neither_fail_nor_change_each_others_results(tmp_path):
    data_dir = tmp_path / "data"
    with StubServer(openai_route()) as stub:
        concurrent = run_children(tmp_path, stub, ["a", "b"], data_dir, "barrier")
        files = list((data_dir / "cache" / "definitions").glob("*.json"))
        assert len(files) == 1  # both talked to the same service
        stored = json.loads(files[0].read_text())
        # One writer per key: the first to merge wrote every shared key; the other adopted them.
        writers = {text.split(" of ")[0] for text in stored.values()}
        assert len(writers) == 1 and writers <= {f"{MARK} definition by lm/a", f"{MARK} definition by lm/b"}
        winner = "a" if writers == {f"{MARK} definition by lm/a"} else "b"
        loser = "b" if winner == "a" else "a"
        generated = concurrent[winner][1]["definitions_generated"]
        assert generated == len(stored) > 0  # the race really happened: both generated every key ...
        assert concurrent[loser][1]["definitions_generated"] == generated
        assert concurrent[loser][1]["definitions_from_another_partition"] == generated  # ... one adopted
        assert concurrent[winner][1]["definitions_from_another_partition"] == 0
        requests = len(stub.seen("/v1/chat/completions"))

        # Re-running each partition from the file (no definition requested) gives the same tables.
        again = run_children(tmp_path, stub, ["a", "b"], data_dir, "rerun")
        assert len(stub.seen("/v1/chat/completions")) == requests
        assert json.loads(files[0].read_text()) == stored
    for name in ("a", "b"):
        assert again[name][1]["definitions_generated"] == 0
        pd.testing.assert_frame_equal(concurrent[name][0], again[name][0])
    pd.testing.assert_frame_equal(concurrent["a"][0], concurrent["b"][0])  # same definitions, same result
