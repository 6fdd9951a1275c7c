#!/usr/bin/env python
"""Write a cat-info JSON (per-category image_count and instance_count, and num_images) from an
LVIS- or COCO-format annotation file, for MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO.

    python tools/write_cat_info.py datasets/lvis/lvis_v1_train.json \
        datasets/metadata/lvis_v1_train_cat_info.json
"""

import argparse

from balms_det.class_counts import write_cat_info


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("annotation_file")
    p.add_argument("output")
    a = p.parse_args()
    info = write_cat_info(a.annotation_file, a.output)
    counts = sorted(c["image_count"] for c in info)
    print(f"Wrote {len(info)} categories to {a.output} (image counts {counts[0]}..{counts[-1]})")


if __name__ == "__main__":
    main()
