"""A tiny Video-MME-format dataset, written locally (tests and smoke runs).

Layout, as in a local copy of lmms-lab/Video-MME with its videos unpacked::

    ROOT/videomme/test-00000-of-00001.parquet   the question table
    ROOT/data/<videoID>.mp4                      one video per videoID

Columns are Video-MME's: video_id, duration (short/medium/long), domain,
sub_category, url, videoID, question_id, task_type, question, options
(list of "A. ..." strings), answer (a letter). Each video is a few frames of
one flat colour, and its question asks for that colour, so a model that sees
the video could answer; a random-weight model answers at chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}
# Valid lmms-eval Video-MME labels (its aggregation only knows these).
DOMAINS = [("Knowledge", "Astronomy"), ("Sports Competition", "Football"), ("Life Record", "Travel")]
TASK_TYPES = ["Attribute Perception", "Object Recognition", "Counting Problem"]
DURATIONS = ["short", "medium", "long"]


def write_video(path: str | Path, rgb: tuple[int, int, int], frames: int = 8, size: int = 64, fps: int = 4) -> Path:
    """An mpeg4 .mp4 of ``frames`` frames of one colour (with a moving bar, so frames differ)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.empty((size, size, 3), dtype=np.uint8)
            img[:] = rgb
            x = (i * size // max(frames, 1)) % size
            img[:, x : x + max(size // 8, 1)] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_videomme(root: str | Path, videos: int = 3, questions_per_video: int = 1, frames: int = 8, size: int = 64, broken: tuple[str, ...] = (), missing: tuple[str, ...] = ()) -> Path:
    """Write the dataset under ``root``; returns ``root``.

    ``broken``: videoIDs written as files that do not decode; ``missing``:
    videoIDs listed in the table with no file at all.
    """
    import pandas as pd

    root = Path(root)
    names = list(COLOURS)
    rows = []
    for v in range(videos):
        vid = f"{v + 1:03d}"
        video_id = f"synthetic{vid}"
        colour = names[v % len(names)]
        path = root / "data" / f"{video_id}.mp4"
        if video_id in broken:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 8)
        elif video_id not in missing:
            write_video(path, COLOURS[colour], frames=frames, size=size)
        domain, sub = DOMAINS[v % len(DOMAINS)]
        for q in range(questions_per_video):
            order = names[q % len(names):] + names[: q % len(names)]
            letter = "ABCD"[order.index(colour)]
            rows.append(
                {
                    "video_id": vid,
                    "duration": DURATIONS[v % len(DURATIONS)],
                    "domain": domain,
                    "sub_category": sub,
                    "url": f"https://example.invalid/{video_id}",
                    "videoID": video_id,
                    "question_id": f"{vid}-{q + 1}",
                    "task_type": TASK_TYPES[(v + q) % len(TASK_TYPES)],
                    "question": "What colour fills most of the video?",
                    "options": [f"{l}. {c}" for l, c in zip("ABCD", order)],
                    "answer": letter,
                }
            )
    table = root / "videomme" / "test-00000-of-00001.parquet"
    table.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(table, index=False)
    return root
