"""VBench scoring worker: runs *inside* the isolated VBench environment.

VBench pins transformers 4.33 and numpy < 2, so spbench never imports it;
:mod:`spbench.vbench_env` runs this file with the environment's Python::

    <venv>/bin/python vbench_worker.py REQUEST.json RESPONSE.json

It imports nothing from spbench (the environment does not have it). The
request lists jobs ``{"name", "videos_path", "dimensions", "mode"}`` and
``device``; the response maps each job name to
``{"dimensions": {dim: {"score", "per_video": [{"video", "score"}]} or
{"skipped": reason}}}``. A dimension whose model weights are not in VBench's
local cache is skipped with the missing path: VBench would try to download
them with wget, which an offline machine cannot do.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

# Weights each dimension loads from VBench's cache ($VBENCH_CACHE_DIR or
# ~/.cache/vbench), as vbench 0.1.5's init_submodules (local mode) expects.
REQUIRED_FILES = {
    "temporal_flickering": [],
    "subject_consistency": ["dino_model/facebookresearch_dino_main", "dino_model/dino_vitbase16_pretrain.pth"],
    "background_consistency": ["clip_model/ViT-B-32.pt"],
    "motion_smoothness": ["amt_model/amt-s.pth"],
    "dynamic_degree": ["raft_model/models/raft-things.pth"],
    "aesthetic_quality": ["clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"],
    "imaging_quality": ["pyiqa_model/musiq_spaq_ckpt-358bb6af.pth"],
    "object_class": ["grit_model/grit_b_densecap_objectdet.pth"],
    "multiple_objects": ["grit_model/grit_b_densecap_objectdet.pth"],
    "color": ["grit_model/grit_b_densecap_objectdet.pth"],
    "spatial_relationship": ["grit_model/grit_b_densecap_objectdet.pth"],
    "scene": ["caption_model/tag2text_swin_14m.pth"],
    "appearance_style": ["clip_model/ViT-B-32.pt"],
    "human_action": ["umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth"],
    "temporal_style": ["ViCLIP/ViClip-InternVid-10M-FLT.pth"],
    "overall_consistency": ["ViCLIP/ViClip-InternVid-10M-FLT.pth"],
}
CUSTOM_UNSUPPORTED = {"object_class", "multiple_objects", "scene", "appearance_style", "color", "spatial_relationship"}


def cache_dir() -> str:
    return os.environ.get("VBENCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vbench")


def missing_weights(dimension: str) -> list[str]:
    root = cache_dir()
    return [os.path.join(root, rel) for rel in REQUIRED_FILES.get(dimension, []) if not os.path.exists(os.path.join(root, rel))]


def score_job(job: dict, device: str, work_dir: str) -> dict:
    import vbench  # noqa: PLC0415 - only inside the VBench environment

    full_info = os.path.join(os.path.dirname(vbench.__file__), "VBench_full_info.json")
    results: dict = {}
    for dim in job["dimensions"]:
        if dim not in REQUIRED_FILES:
            results[dim] = {"skipped": f"unknown VBench dimension {dim!r}"}
            continue
        if job["mode"] == "custom_input" and dim in CUSTOM_UNSUPPORTED:
            results[dim] = {"skipped": "VBench scores this dimension only on its standard prompts (use --prompts standard)"}
            continue
        missing = missing_weights(dim)
        if missing:
            results[dim] = {"skipped": "weights not in the local VBench cache: " + ", ".join(missing)}
            continue
        out_dir = os.path.join(work_dir, job["name"], dim)
        try:
            bench = vbench.VBench(device, full_info, out_dir)
            bench.evaluate(
                videos_path=job["videos_path"],
                name=dim,
                dimension_list=[dim],
                local=True,
                mode=job["mode"],
            )
            with open(os.path.join(out_dir, f"{dim}_eval_results.json")) as f:
                raw = json.load(f)[dim]
            score, per_video = raw[0], raw[1] if len(raw) > 1 else []
            rows = []
            for item in per_video if isinstance(per_video, list) else []:
                if isinstance(item, dict) and "video_path" in item:
                    value = item.get("video_results")
                    rows.append({"video": os.path.basename(str(item["video_path"])), "score": value if isinstance(value, (int, float)) else None})
            results[dim] = {"score": float(score), "per_video": rows}
        except Exception as exc:  # one dimension failing must not lose the others
            text = str(exc).strip().splitlines()
            results[dim] = {"skipped": f"VBench failed: {type(exc).__name__}: {text[0] if text else ''}", "traceback": traceback.format_exc()[-2000:]}
    return {"dimensions": results}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: vbench_worker.py REQUEST.json RESPONSE.json", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        request = json.load(f)
    device = request.get("device", "cpu")
    work_dir = request["work_dir"]
    response = {"jobs": {}}
    for job in request["jobs"]:
        response["jobs"][job["name"]] = score_job(job, device, work_dir)
    with open(argv[2], "w") as f:
        json.dump(response, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
