"""DGSemSegEvaluator under DDP: two CPU processes (GLOO) through Detectron2's ``launch``, each
evaluating half of the images; the main process must report the metrics of all of them."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import launch
from detectron2.utils import comm
from PIL import Image

from vlt_common.evaluation import DGSemSegEvaluator

CLASSES = ["a", "b", "c"]


def _worker(pairs, out_file):
    # Spawned processes start empty: register the metadata the evaluator reads.
    MetadataCatalog.get("dgtest_ddp").set(stuff_classes=CLASSES, ignore_label=255)
    evaluator = DGSemSegEvaluator("dgtest_ddp", distributed=True)
    evaluator.reset()
    inp, pred = pairs[comm.get_rank()]
    scores = torch.nn.functional.one_hot(torch.tensor(pred), len(CLASSES)).permute(2, 0, 1)
    evaluator.process([inp], [{"sem_seg": scores.float()}])
    results = evaluator.evaluate()
    if comm.is_main_process():
        with open(out_file, "w") as f:
            json.dump(results["sem_seg"], f)
    else:
        assert results is None


@pytest.mark.slow
def test_two_process_evaluation_gathers_confusion_matrices(tmp_path):
    gts = [np.array([[0, 0, 1], [1, 2, 255]]), np.array([[2, 2, 2], [0, 1, 1]])]
    preds = [np.array([[0, 1, 1], [1, 2, 0]]), np.array([[2, 0, 2], [0, 1, 2]])]
    pairs = []
    for k, gt in enumerate(gts):
        label = str(tmp_path / f"label{k}.png")
        image = str(tmp_path / f"image{k}.png")
        Image.fromarray(gt.astype(np.uint8)).save(label)
        Image.fromarray(np.zeros(gt.shape + (3,), np.uint8)).save(image)
        pairs.append(({"file_name": image, "sem_seg_file_name": label}, preds[k].tolist()))
    out_file = str(tmp_path / "results.json")
    launch(_worker, 2, dist_url="auto", args=(pairs, out_file))
    with open(out_file) as f:
        res = json.load(f)
    # Both images together, counted by hand: rows ground truth, columns prediction.
    # a: 3 gt px, tp 2 (pred b once); b: 4 gt px, tp 3 (pred c once); c: 4 gt px, tp 3 (pred a).
    # Predicted: a 3 (tp 2), b 4 (tp 3), c 4 (tp 3).
    assert res["IoU-a"] == pytest.approx(100 * 2 / (3 + 3 - 2))
    assert res["IoU-b"] == pytest.approx(100 * 3 / (4 + 4 - 3))
    assert res["IoU-c"] == pytest.approx(100 * 3 / (4 + 4 - 3))
    assert res["pACC"] == pytest.approx(100 * 8 / 11)
    assert os.path.getsize(out_file) > 0
