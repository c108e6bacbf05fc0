#!/usr/bin/env python3
"""The Python baseline of `medgen bench curate`: the classical curation path written the way a
PySceneDetect + OpenCV user writes it, to compare videos/hour/core with medgen's
curate.segment -> curate.black_border -> curate.dedup on the same files in the same run.

Run it from the venv that scripts/bench/setup-baseline.sh makes:

    .cache/benchenv/bin/python scripts/bench/curate_baseline.py FILE... [--min-seconds 2] [--max-seconds 10]

It prints one JSON object on stdout: {"videos", "seconds", "shots", "clips", "border_rejected",
"duplicates", "kept", "frames_analysed", "versions"}. `seconds` is the wall clock of the work
(after imports). One core: it sets OMP_NUM_THREADS=1 (before numpy/cv2 load) and
cv2.setNumThreads(1); the caller pins the process the same way.

Per video:

1. Shots: scenedetect.detect(path, ContentDetector(), start_in_scene=True) with the default
   OpenCV backend and default settings (threshold 27, auto-downscale), i.e. every frame is decoded
   at full rate once, as PySceneDetect's users run it.
2. Clips: shots shorter than --min-seconds are dropped; longer than --max-seconds are split into
   the fewest equal pieces no longer than it, and where those would be shorter than
   --min-seconds, one centred piece of --max-seconds is kept (the same rule as curate.segment).
3. For each clip, the frames at 1 fps (t = start, start + 1 s, ... < end) are read with
   cv2.VideoCapture seeks (CAP_PROP_POS_FRAMES, then read(): FFmpeg seeks to the previous keyframe
   and decodes forward), and on each frame:
   * black border: the rows (columns) from each edge in which >= 98% of pixels have every channel
     <= 40 form a band; it is a border when cv2.HoughLinesP on cv2.Canny(gray, 30, 80) gives a
     horizontal (vertical) segment at least 30% of the width (height) long within 2 px of the
     band's inner boundary and the band covers <= 40% of the frame. A side's border persists when
     found on >= 80% of the frames with a median width >= 4 px; such clips are rejected;
   * perceptual hash: gray, cv2.resize to 32x32 (INTER_AREA), cv2.dct, the 8x8 lowest frequencies
     against their median -> 64 bits (flat frames: no hash).
4. Dedup across all kept clips of all videos: the distance of two clips is the mean over frame
   positions of the Hamming distance (64 where one side lacks a frame or a hash, 0 where both are
   flat); a clip with a near-duplicate (<= 6 bits) earlier in the list is dropped. All pairs are
   compared (O(n^2); there are few clips here).

What matches medgen's path: one full-rate decode per video for cut detection (PySceneDetect
downscales frames for its detector, medgen's curate.segment has GStreamer scale to 64x64), the
same clip-length rule, the same kinds of per-clip work (Canny + Hough border test with the same
thresholds, DCT pHash, Hamming-distance dedup at 6 bits) on sparsely sampled frames read by
seeking, and one process on one core.

What differs, honestly:
* Cut detection: ContentDetector's HSV frame-difference threshold versus curate.segment's
  adaptive histogram+thumbnail dissimilarity; curate.segment also splits at gradual changes
  between its 1 fps similarity samples (tau), which PySceneDetect's ContentDetector does not.
  The shot lists can differ, and so can the clip counts (both are reported).
* Frames per clip: here every 1 fps frame (both tests on each); medgen decodes 5 frames spread
  over the clip for the border and 3 for the hash (frames at the stored size for the border, gray
  128x128 for the hash). For clips of 2-10 s that is 2-10 frames here against 8 there.
* The border test uses OpenCV's probabilistic Hough (HoughLinesP) rather than medgen's
  axis-restricted (rho, theta) accumulator; dedup compares all pairs rather than a banded LSH join.
* medgen also hashes every file's content (blake3) for its memo keys, writes a run store
  (catalog, memo cache, outputs) and a JSONL sink; none of that exists here.
"""

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENCV_FOR_THREADS_NUM", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import scenedetect  # noqa: E402
from scenedetect import ContentDetector  # noqa: E402

BLACK_LEVEL = 40
BLACK_SHARE = 0.98
MAX_BAND_FRACTION = 0.4
LINE_SUPPORT = 0.3
LINE_TOLERANCE_PX = 2
PERSIST_FRACTION = 0.8
MIN_WIDTH_PX = 4
MAX_DISTANCE = 6.0


def clip_spans(start, end, min_s, max_s):
    """curate.segment's length rule on one shot [start, end) in seconds."""
    length = end - start
    if length < min_s:
        return []
    if length <= max_s:
        return [(start, end)]
    pieces = math.ceil(length / max_s - 1e-9)
    piece = length / pieces
    if piece < min_s:
        mid = (start + end) / 2
        return [(mid - max_s / 2, mid + max_s / 2)]
    return [(start + i * piece, start + (i + 1) * piece) for i in range(pieces)]


def leading_true(flags):
    """How many flags from the start are True."""
    n = 0
    for f in flags:
        if not f:
            break
        n += 1
    return n


def borders(frame):
    """Border width per side (top, bottom, left, right) on one BGR frame; 0 where none."""
    h, w = frame.shape[:2]
    black = frame.max(axis=2) <= BLACK_LEVEL
    rows = black.mean(axis=1) >= BLACK_SHARE
    cols = black.mean(axis=0) >= BLACK_SHARE
    bands = [leading_true(rows), leading_true(rows[::-1]), leading_true(cols), leading_true(cols[::-1])]
    if not any(bands):
        return [0, 0, 0, 0]
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    edges = cv2.Canny(gray, 30, 80)
    min_len = LINE_SUPPORT * min(w, h)
    lines = cv2.HoughLinesP(edges, 1, np.pi / 180, threshold=max(1, int(min_len)), minLineLength=min_len, maxLineGap=8)
    horiz, vert = [], []
    if lines is not None:
        for x1, y1, x2, y2 in np.asarray(lines).reshape(-1, 4):
            if abs(y1 - y2) <= 1 and abs(x2 - x1) >= LINE_SUPPORT * w:
                horiz.append((y1 + y2) / 2)
            elif abs(x1 - x2) <= 1 and abs(y2 - y1) >= LINE_SUPPORT * h:
                vert.append((x1 + x2) / 2)
    out = []
    for side, band in enumerate(bands):
        extent = h if side < 2 else w
        if band == 0 or band > MAX_BAND_FRACTION * extent:
            out.append(0)
            continue
        # The band's inner boundary: the first non-black line (or the last, from the far edge).
        inner = band if side in (0, 2) else extent - 1 - band
        cands = horiz if side < 2 else vert
        out.append(band if any(abs(c - inner) <= LINE_TOLERANCE_PX for c in cands) else 0)
    return out


def phash(frame):
    """64-bit DCT perceptual hash of a BGR frame, or None for a flat frame."""
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    if float(np.ptp(low[1:])) < 1e-3:
        return None
    bits = low > np.median(low)
    return int(np.packbits(bits).view(">u8")[0])


def distance(a, b):
    """Mean per-position Hamming distance of two clips' hash lists (None: a flat frame)."""
    n = max(len(a), len(b))
    if n == 0:
        return 0.0
    total = 0
    for i in range(n):
        if i >= len(a) or i >= len(b):
            total += 64
        elif a[i] is None and b[i] is None:
            pass
        elif a[i] is None or b[i] is None:
            total += 64
        else:
            total += bin(a[i] ^ b[i]).count("1")
    return total / n


def analyse_clip(cap, fps, start, end):
    """1 fps frames of one clip: (persistent border?, hashes, frames read)."""
    widths, hashes = [], []
    t = start
    while t < end - 1e-6:
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(round(t * fps)))
        ok, frame = cap.read()
        if not ok:
            break
        widths.append(borders(frame))
        hashes.append(phash(frame))
        t += 1.0
    persistent = False
    if widths:
        for side in range(4):
            found = [w[side] for w in widths if w[side] > 0]
            if len(found) >= PERSIST_FRACTION * len(widths) and float(np.median(found)) >= MIN_WIDTH_PX:
                persistent = True
    return persistent, hashes, len(widths)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--max-seconds", type=float, default=10.0)
    args = ap.parse_args()
    cv2.setNumThreads(1)

    started = time.perf_counter()
    shots = clips = border_rejected = frames = 0
    kept = []  # (file, start, end, hashes)
    for path in args.files:
        scenes = scenedetect.detect(path, ContentDetector(), start_in_scene=True)
        shots += len(scenes)
        cap = cv2.VideoCapture(path)
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        for s, e in scenes:
            for a, b in clip_spans(s.seconds, e.seconds, args.min_seconds, args.max_seconds):
                clips += 1
                persistent, hashes, n = analyse_clip(cap, fps, a, b)
                frames += n
                if persistent:
                    border_rejected += 1
                else:
                    kept.append((path, a, b, hashes))
        cap.release()
    unique = []
    for clip in kept:
        if all(distance(clip[3], u[3]) > MAX_DISTANCE for u in unique):
            unique.append(clip)
    seconds = time.perf_counter() - started

    print(
        json.dumps(
            {
                "videos": len(args.files),
                "seconds": seconds,
                "shots": shots,
                "clips": clips,
                "border_rejected": border_rejected,
                "duplicates": len(kept) - len(unique),
                "kept": len(unique),
                "frames_analysed": frames,
                "versions": {"scenedetect": scenedetect.__version__, "opencv": cv2.__version__, "numpy": np.__version__},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
