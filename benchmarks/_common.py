"""Helpers shared by the benchmark scripts (not a public API)."""

import json
import os


def write_outputs(out_dir, name, markdown, payload):
    """Write ``<out_dir>/<name>.md`` (the table) and ``<out_dir>/<name>.json`` (``payload``),
    print the table, and return the two paths."""
    os.makedirs(out_dir, exist_ok=True)
    md_path, json_path = (os.path.join(out_dir, f"{name}.{ext}") for ext in ("md", "json"))
    with open(md_path, "w") as f:
        f.write(markdown + "\n")
    with open(json_path, "w") as f:
        json.dump(payload, f, indent=1)
    print(markdown, flush=True)
    return md_path, json_path
