"""`fsdi demo`: a demo line on a running service, and its images on disk, so a newcomer
sees a verdict and a heatmap in the first minute.

Every image is drawn by the project's own synthetic surface generator
(models.data.synthetic: a cast-plate surface, scratches and stains), never taken from a
data set. Written beside the current directory:

    demo-images/good/        the good parts enrolled into the "ok" class (kind good)
    demo-images/scratch/     the scratches enrolled into "scratch"
    demo-images/stain/       the stains enrolled into "stain"
    demo-images/ok-01.png …  a dozen parts to classify, named for what they are
    demo-images/defects.json where each defective part's defect is (x0, y0, x1, y1)

`fsdi check demo-images/` takes the three folders as they are (the loose parts and the
JSON are not class folders). Through the REST API only, like a factory system: it works
the same against one process, a Docker container or replicas behind a balancer.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from app.check import CheckError, Service

GROUP = "demo"
SURFACE = "plate"
# Enough per class for `fsdi check demo-images/` at its defaults (10 shots + 15 queries).
GOOD, PER_DEFECT = 30, 25
DEFECTS = ("scratch", "stain")
QUERIES = {"ok": 4, "scratch": 4, "stain": 4}


@dataclass(frozen=True)
class DemoImages:
    root: Path
    queries: dict[str, str]  # file name -> what it is ("ok", "scratch", "stain")
    boxes: dict[str, tuple[int, int, int, int]]  # defective file name -> its defect


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def write_images(root: Path, seed: int = 2026) -> DemoImages:
    """The demo's images under `root` (made again, identically, for the same seed)."""
    from models.data.synthetic import render_with_mask

    rng = np.random.default_rng(seed)
    boxes: dict[str, tuple[int, int, int, int]] = {}
    queries: dict[str, str] = {}

    def draw(kind: str, path: Path) -> None:
        for _ in range(50):  # a defect drawn faintly enough to vanish is drawn again
            img, mask = render_with_mask(kind, rng, SURFACE)
            if kind == "ok" or mask.sum() >= 30:
                break
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(img))
        if kind != "ok":
            ys, xs = np.nonzero(mask)
            boxes[path.name] = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))

    for i in range(GOOD):
        draw("ok", root / "good" / f"good-{i + 1:02d}.png")
    for kind in DEFECTS:
        for i in range(PER_DEFECT):
            draw(kind, root / kind / f"{kind}-{i + 1:02d}.png")
    for kind, n in QUERIES.items():
        for i in range(n):
            name = f"{kind}-{i + 1:02d}.png"
            draw(kind, root / name)
            queries[name] = kind
    (root / "defects.json").write_text(json.dumps(
        {n: boxes[n] for n in queries if n in boxes}, indent=1) + "\n")
    return DemoImages(root, queries, {n: boxes[n] for n in queries if n in boxes})


def enrol(service: Service, images: DemoImages, batch: int = 16,
          say: object = print) -> dict[str, int]:
    """The demo group on the service: the good class first (the threshold then has both
    sides), then the defect classes. Refuses a service whose `demo` group has classes."""
    existing = service.list_classes(GROUP)
    if existing:
        raise CheckError(f"the service already has a group {GROUP!r} "
                         f"({len(existing)} classes): delete them first, or use it as it is")
    ids: dict[str, int] = {}
    for name, folder, kind in (("ok", "good", "good"), *((d, d, "defect") for d in DEFECTS)):
        ids[name] = service.create_class(name, GROUP, kind)
        files = sorted((images.root / folder).glob("*.png"))
        service.enrol(ids[name], files, batch)
        say(f"  {name:<8} {kind:<6} {len(files)} images enrolled")  # type: ignore[operator]
    return ids
