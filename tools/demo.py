#!/usr/bin/env python
"""Run a trained model on images and save them with its detections drawn (Detectron2's
``demo/demo.py`` conventions), from a config and a checkpoint only: no dataset needs to be
registered, the class names come from the checkpoint.

python tools/demo.py --config-file configs/own_data/cpu_r18.yaml \\
    --input photo.jpg more/*.png a_folder/ --output out/ \\
    --opts MODEL.WEIGHTS output/own_data_cpu_r18/model_final.pth

--input takes image files, glob patterns and folders (their images); --output is a folder
(one visualised image per input, same file name) or, for a single input, a file name.
MODEL.ROI_HEADS.NUM_CLASSES 0 (the own-data templates) is read from the checkpoint.
"""

import argparse
import glob
import logging
import os
import time

import cv2
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

from balms_det import add_balms_config
from balms_det.engine.checkpoint import read_checkpoint
from balms_det.engine.preflight import resolve_num_classes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
logger = logging.getLogger("balms_det.demo")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    p.add_argument(
        "--input", nargs="+", required=True, help="image files, glob patterns or folders"
    )
    p.add_argument(
        "--output",
        required=True,
        help="folder for the visualised images (a file name for a single input image)",
    )
    p.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score for instances to be shown",
    )
    p.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="modify config options using the command-line 'KEY VALUE' pairs",
    )
    return p


def setup_cfg(args):
    """The config of ``args``; no dataset is registered (serving needs none), the score
    threshold is ``--confidence-threshold`` (as Detectron2's demo sets it)."""
    cfg = get_cfg()
    add_balms_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = args.confidence_threshold
    if not cfg.MODEL.WEIGHTS:
        raise ValueError(
            "tools/demo.py needs trained weights: --opts MODEL.WEIGHTS path/to/model_final.pth"
        )
    read_checkpoint(cfg.MODEL.WEIGHTS)  # names a damaged file; refuses NaN weights
    note = resolve_num_classes(cfg)  # NUM_CLASSES 0: from the checkpoint
    if note:
        logger.info(note)
    cfg.freeze()
    return cfg


def input_images(inputs):
    """The image files of ``inputs`` (files, glob patterns, folders), in order, each once."""
    found = []
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(os.listdir(item))
            found += [os.path.join(item, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.isfile(item):
            found.append(item)
        else:
            matches = sorted(glob.glob(os.path.expanduser(item)))
            if not matches:
                raise FileNotFoundError(f"--input '{item}' is no image, folder or matching pattern")
            found += [m for m in matches if os.path.isfile(m)]
    found = list(dict.fromkeys(found))
    if not found:
        raise FileNotFoundError(f"--input {inputs} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
    return found


def output_path(output, path, single):
    if single and os.path.splitext(output)[1].lower() in IMAGE_EXTENSIONS:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        return output
    os.makedirs(output, exist_ok=True)
    return os.path.join(output, os.path.basename(path))


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="balms_det")
    logger.info("Arguments: %s", args)
    cfg = setup_cfg(args)
    predictor = DefaultPredictor(cfg)
    # the metadata DefaultPredictor and Detectron2's demo read; a balms checkpoint gave it the
    # class names when it has none
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused")
    if metadata.get("thing_classes", None) is None:
        logger.warning(
            "Checkpoint '%s' holds no class names (saved before they were kept): the labels "
            "are class indices",
            cfg.MODEL.WEIGHTS,
        )
    paths = input_images(args.input)
    written = []
    for path in paths:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"--input image '{path}' cannot be read as an image")
        if cfg.INPUT.FORMAT == "RGB":
            img = img[:, :, ::-1]
        start = time.time()
        instances = predictor(img)["instances"].to("cpu")
        rgb = img if cfg.INPUT.FORMAT == "RGB" else img[:, :, ::-1]
        vis = Visualizer(rgb, metadata, instance_mode=ColorMode.IMAGE)
        out = vis.draw_instance_predictions(predictions=instances).get_image()[:, :, ::-1]
        dest = output_path(args.output, path, len(paths) == 1)
        cv2.imwrite(dest, out)
        written.append(dest)
        logger.info(
            "%s: detected %d instances in %.2fs -> %s",
            path,
            len(instances),
            time.time() - start,
            dest,
        )
    return written


if __name__ == "__main__":
    main()
