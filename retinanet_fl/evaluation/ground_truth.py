"""
The ground truth evaluation scores, as a COCO-format dict built from the sanitised dataset dicts
that training reads (our own converter: Detectron2's ``convert_to_coco_dict`` takes a registered
name and converts the dicts as they were registered, before any box was dropped or clipped).
"""

import contextlib
import io
from typing import Dict, List, Sequence

import numpy as np
from detectron2.data.catalog import Metadata
from detectron2.structures import BoxMode
from pycocotools.coco import COCO

from ..data.sanitize import boxes_to_xyxy

__all__ = ["coco_from_dict", "coco_ground_truth", "incomplete_annotations"]


def _dataset_category_ids(metadata: Metadata) -> List:
    """Returns: the dataset's category id of each contiguous class index."""
    id_map = metadata.get("thing_dataset_id_to_contiguous_id")
    if not id_map:  # no ids of its own (a Pascal VOC folder): the indices are the ids
        return list(range(len(metadata.thing_classes)))
    by_index = {index: category_id for category_id, index in id_map.items()}
    return [by_index[index] for index in range(len(metadata.thing_classes))]


def _scored_annotations(record: Dict, num_classes: int) -> List[Dict]:
    """Returns: the annotations of a record that can be scored: a box and a known category."""
    return [
        annotation
        for annotation in record["annotations"]
        if len(annotation.get("bbox") or ()) == 4 and 0 <= annotation["category_id"] < num_classes
    ]


def coco_ground_truth(dataset_dicts: Sequence[Dict], metadata: Metadata) -> Dict:
    """
    Args:
        dataset_dicts: sanitised dataset dicts (contiguous category ids), every image of the split.
        metadata: the dataset's metadata: ``thing_classes`` and, when the dataset has category
            ids of its own, ``thing_dataset_id_to_contiguous_id``.

    Returns:
        a COCO-format dict: the dataset's category ids and image ids, boxes as XYWH; "iscrowd" 0
        where the dicts have none; "area" the annotation's own (the JSON's) where it has one, else
        the box's (the sanitiser removes it from the boxes it clips); annotation ids 1, 2, ...
        (COCOeval counts a match with a ground-truth id 0 as none).
    """
    category_ids = _dataset_category_ids(metadata)
    scored = [_scored_annotations(record, len(category_ids)) for record in dataset_dicts]
    flat = [annotation for annotations in scored for annotation in annotations]
    boxes = np.asarray([a["bbox"] for a in flat], dtype=np.float64).reshape(-1, 4)
    xywh = boxes_to_xyxy(boxes, [a.get("bbox_mode", BoxMode.XYWH_ABS) for a in flat])
    xywh[:, 2:] -= xywh[:, :2]
    coco_annotations = []
    for record, annotations in zip(dataset_dicts, scored):
        for annotation in annotations:
            box = xywh[len(coco_annotations)].tolist()
            coco_annotations.append(
                {
                    "id": len(coco_annotations) + 1,
                    "image_id": record["image_id"],
                    "category_id": category_ids[annotation["category_id"]],
                    "bbox": box,
                    "area": float(annotation.get("area", box[2] * box[3])),
                    "iscrowd": int(annotation.get("iscrowd", 0)),
                }
            )
    return {
        "info": {"description": "the sanitised ground truth that training reads"},
        "images": [
            {key: record[key] for key in ("file_name", "height", "width")}
            | {"id": record["image_id"]}
            for record in dataset_dicts
        ],
        "annotations": coco_annotations,
        "categories": [
            {"id": category_id, "name": name}
            for category_id, name in zip(category_ids, metadata.thing_classes)
        ],
    }


def coco_from_dict(ground_truth: Dict) -> COCO:
    """Returns: the COCO API object of a COCO-format dict, as ``COCO(json_file)`` makes one."""
    coco = COCO()
    coco.dataset = ground_truth
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines
        coco.createIndex()
    return coco


def incomplete_annotations(annotations: Sequence[Dict]) -> List[str]:
    """
    Args:
        annotations: the "annotations" of a COCO JSON.

    Returns:
        what in them COCOeval cannot score as they are, e.g. ["3 annotations without 'area'"];
        empty when nothing.
    """
    problems = []
    for key in ("iscrowd", "area"):
        count = sum(key not in annotation for annotation in annotations)
        if count:
            problems.append(f"{count} annotations without {key!r}")
    if any(annotation.get("id") == 0 for annotation in annotations):
        problems.append("an annotation with id 0 (COCOeval counts its match as a false positive)")
    return problems
