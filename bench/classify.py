"""End-to-end /classify benchmark against the raw network, measured in the same run.

    python -m bench.classify [--clients 4] [--per-request 8] [--seconds 20] [--rounds 3]

1. Starts a real `fsdi serve` on a free port (temp data dir), enrols 10 classes x 5
   images, and drives /classify with C concurrent clients uploading 640x480 JPEG files
   (a typical inspection camera frame), every upload a file the service has not seen
   (as on a line: each one is hashed and kept); prints img/s and p50/p95/p99 request
   latency.
2. Time from POSTing 5 images of a new class until /classify returns that class.
3. Classify latency (one image, sequential) with 10, 1,000 and 10,000 enrolled classes
   (the large groups are seeded directly through the storage layer with random unit
   embeddings of the served model version; images are not needed to classify).
4. The raw network on preprocessed tensors, in ONNX Runtime and in PyTorch eager.
   A selection pass (before the server starts) measures every configuration worth
   trying and names the candidates: the fastest ORT configuration and the service's
   own; PyTorch eager as usually run (one model, its thread pool over all cores, the
   faster of batch 1 and 16) and the fastest PyTorch configuration. Those are measured
   again, taking turns with the end-to-end load (baseline, load, ..., baseline) while
   the server idles: picking the best of several noisy figures favours a lucky one, so
   the fastest of a runtime is the faster of its candidates *as measured again*; and
   drift of the shared machine hits the service and its baselines alike. Prints the
   ratios the targets are stated in.
5. The service's own decode step (sha256, JPEG decoding, resize) alone, in one thread,
   on the load's files, taking the same turns: against the network's CPU per image it
   gives the ratio no service that decodes these files could pass on this machine, and
   what a 0.8 target leaves for everything else (HTTP, multipart, storage, the client).
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.imagegen import SURFACES, draw_defect, surface
from bench.server import Server
from models.backbones import PreprocessConfig

KEY = "bench-admin-key-0123456789abcdef"
H = {"Authorization": f"Bearer {KEY}"}
DEFECTS = ("scratch", "stain", "hole", None)


def frame(seed: int, defect: str | None, surf: str) -> bytes:
    rng = np.random.default_rng(seed)
    img = surface(surf, rng, 480).resize((640, 480))
    if defect:
        img = draw_defect(img, defect, rng)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def enrol_ten(c: httpx.Client, group: str) -> None:
    n = 0
    for surf in SURFACES:
        for defect in DEFECTS:
            if n == 10:
                return
            cid = c.post("/api/v1/classes", json={"name": f"{surf}-{defect}", "group": group}
                         ).json()["id"]
            files = [("files", (f"{j}.jpg", frame(100 * n + j, defect, surf), "image/jpeg"))
                     for j in range(5)]
            r = c.post(f"/api/v1/classes/{cid}/images", files=files)
            r.raise_for_status()
            n += 1


def enrol_good(c: httpx.Client, group: str, n: int = 50) -> None:
    """A good class of n 640x480 frames (the surfaces in turn), ten per request."""
    gid = c.post("/api/v1/classes", json={"name": "ok", "group": group, "kind": "good"}
                 ).json()["id"]
    for start in range(0, n, 10):
        c.post(f"/api/v1/classes/{gid}/images", files=[
            ("files", (f"g{j}.jpg", frame(60_000 + j, None, SURFACES[j % 3]), "image/jpeg"))
            for j in range(start, min(n, start + 10))]).raise_for_status()


def tagged(jpeg: bytes, tag: str) -> bytes:
    """The same JPEG with a comment segment (COM) after its start marker: other bytes,
    the same pixels, so the service stores and hashes it as a new file."""
    text = tag.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "fsdibench7f3a9c"
    parts = []
    for name, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
                     f'filename="{name}"\r\nContent-Type: image/jpeg\r\n\r\n'.encode())
        parts.append(data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


TAG = 32  # characters of the comment that makes each upload a new file


def load_frames() -> list[bytes]:
    """The 64 frames the load cycles through (each upload gets a comment of its own)."""
    return [frame(10_000 + i, DEFECTS[i % 4], SURFACES[i % 3]) for i in range(64)]


def decode_cpu_ms(files: list[bytes], cfg: PreprocessConfig, seconds: float) -> float:
    """CPU ms per image of the service's own decode step (app.services.uploads.decode_one:
    sha256, JPEG decoding at a reduced DCT scale, resize), in one thread, on the load's
    files: the part of the service's work no HTTP stack or storage can avoid."""
    from app.services.uploads import decode_one

    decode_one("w.jpg", files[0], cfg, 10**9)  # warm-up
    n, t0, stop = 0, time.thread_time(), time.perf_counter() + seconds
    while time.perf_counter() < stop:
        decode_one("f.jpg", files[n % len(files)], cfg, 10**9)
        n += 1
    return (time.thread_time() - t0) * 1000 / n


def load(url: str, clients: int, per_req: int, seconds: float, key: str, group: str = "bench"
         ) -> tuple[int, float, list[float], float]:
    """C keep-alive clients holding a `machine` key, as a factory system does (its lookup
    is part of every request). Every upload is a file the service has not seen: 64 frames
    are drawn once, and each upload's comment segment gets a text of its own, written in
    place into request bodies built up front (the client shares the machine's two cores
    with the service, so it costs as little as it can). Returns images, seconds, request
    latencies and the client threads' own CPU seconds while sending."""
    frames = load_frames()
    run = time.time_ns() % 10**8
    host, port = url.removeprefix("http://").split(":")
    lat: list[float] = []
    count = [0]
    client_cpu = [0.0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(w: int) -> None:
        bodies = []
        for j in range(0, 64, per_req):
            body, ctype = multipart([(f"{k}.jpg", tagged(frames[(j + k) % 64], "#" * TAG))
                                     for k in range(per_req)])
            at = [body.find(b"#" * TAG)]
            while len(at) < per_req:
                at.append(body.find(b"#" * TAG, at[-1] + TAG))
            bodies.append((bytearray(body), at))
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        i, cpu0 = 0, time.thread_time()
        while time.monotonic() < stop:
            buf, at = bodies[i % len(bodies)]
            for k, offset in enumerate(at):
                buf[offset:offset + TAG] = f"{run:08d}{w:04d}{i:012d}{k:08d}".encode()
            t = time.perf_counter()
            conn.request("POST", f"/api/v1/classify?group={group}", body=buf,
                         headers={"Authorization": f"Bearer {key}", "Content-Type": ctype})
            resp = conn.getresponse()
            payload = resp.read()
            dt = time.perf_counter() - t
            assert resp.status == 200, payload[:300]
            with lock:
                lat.append(dt)
                count[0] += per_req
            i += 1
        with lock:
            client_cpu[0] += time.thread_time() - cpu0
        conn.close()

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return count[0], time.perf_counter() - t0, lat, client_cpu[0]


def time_to_classifiable(c: httpx.Client) -> float:
    cid = c.post("/api/v1/classes", json={"name": "new-defect", "group": "bench"}).json()["id"]
    imgs = [frame(77_000 + j, "stain", "gravel") for j in range(5)]
    probe = [("files", ("p.jpg", frame(77_100, "stain", "gravel"), "image/jpeg"))]
    t = time.perf_counter()
    c.post(f"/api/v1/classes/{cid}/images",
           files=[("files", (f"{j}.jpg", b, "image/jpeg")) for j, b in enumerate(imgs)]
           ).raise_for_status()
    r = c.post("/api/v1/classify", params={"group": "bench", "top_k": 20}, files=probe)
    dt = time.perf_counter() - t
    assert any(t["class_id"] == cid for t in r.json()["results"][0]["top_k"])
    return dt


def seed_classes(db_url: str, version: str, dim: int, metric: int, counts: list[int]) -> None:
    from storage.db import make_engine, make_sessionmaker
    from storage.migrate import upgrade
    from storage.repositories import new_embedding
    from storage.tables import DefectClass, SupportImage

    engine = make_engine(db_url)
    upgrade(engine)
    rng = np.random.default_rng(0)
    backbone, sha = version.split("@")[0], "0" * 64
    with make_sessionmaker(engine).begin() as s:
        for n in counts:
            for k in range(n):
                c = DefectClass(name=f"c{k}", group_name=f"scale{n}", description="")
                for j in range(3):
                    v = rng.normal(size=dim).astype(np.float32)
                    v[:metric] /= np.linalg.norm(v[:metric])
                    v[metric:] /= max(float(np.linalg.norm(v[metric:])), 1e-6)
                    img = SupportImage(sha256=f"{n:08d}{k:08d}{j:048d}", original_name="x",
                                       byte_size=0, width=1, height=1)
                    img.embeddings.append(new_embedding(v, backbone, sha, version))
                    c.images.append(img)
                s.add(c)
    engine.dispose()


def scale_latency(url: str, counts: list[int], rounds: int) -> dict[int, float]:
    """Median single-image latency per group size; the groups take turns in every round
    (alternating order), so drift of the shared machine hits them all alike."""
    img = [("files", ("q.jpg", frame(5, "scratch", "brick"), "image/jpeg"))]
    times: dict[int, list[float]] = {n: [] for n in counts}
    with httpx.Client(base_url=url, headers=H, timeout=60) as c:
        for n in counts:
            for _ in range(5):  # warm-up
                c.post("/api/v1/classify", params={"group": f"scale{n}"}, files=img)
        for r in range(rounds):
            for n in (counts if r % 2 else counts[::-1]):
                t = time.perf_counter()
                resp = c.post("/api/v1/classify", params={"group": f"scale{n}"}, files=img)
                times[n].append(time.perf_counter() - t)
                assert resp.status_code == 200
    return {n: statistics.median(ts) for n, ts in times.items()}


def run_streams(embed: Callable[[np.ndarray], np.ndarray], x: np.ndarray, streams: int,
                seconds: float) -> float:
    """img/s of `streams` threads each calling `embed(x)` back to back (the runtimes
    release the GIL), after one warm-up call per thread."""
    count = [0]
    lock = threading.Lock()
    start = threading.Barrier(streams + 1)
    stop = [0.0]

    def worker() -> None:
        embed(x)
        start.wait()
        n = 0
        while time.perf_counter() < stop[0]:
            embed(x)
            n += x.shape[0]
        with lock:
            count[0] += n

    ts = [threading.Thread(target=worker) for _ in range(streams)]
    for t in ts:
        t.start()
    stop[0] = time.perf_counter() + seconds + 3600  # warm-ups never count as late
    start.wait()  # every stream warmed up: go
    t0 = time.perf_counter()
    stop[0] = t0 + seconds
    for t in ts:
        t.join()
    return count[0] / (time.perf_counter() - t0)


@dataclass(frozen=True)
class Config:
    streams: int
    threads: int  # per stream
    batch: int

    def __str__(self) -> str:
        return f"{self.streams} stream(s) x {self.threads} thread(s), batch {self.batch}"


ORT, TORCH = "onnxruntime", "torch"
Pair = tuple[str, Config]  # (runtime, configuration)


class RawNetwork:
    """The bare served network on preprocessed uint8 input, in ONNX Runtime and in
    PyTorch eager; sessions are built once and reused across measurements."""

    def __init__(self, cache: Path, max_batch: int) -> None:
        import torch

        from models.embedder import TorchEmbedder, pin_threads
        from models.zoo import create_backbone

        self._torch = torch
        self.backbone = create_backbone(*served_backbone())
        self.cache = cache
        c = self.backbone.preprocess.channels
        self.x = np.random.default_rng(0).integers(0, 256, (max_batch, 224, 224, c),
                                                   dtype=np.uint8)
        pin_threads(1)
        self.torch_embedder = TorchEmbedder(self.backbone)
        self._ort: dict[int, Callable[[np.ndarray], np.ndarray]] = {}

    def ort(self, threads: int) -> Callable[[np.ndarray], np.ndarray]:
        from models.embedder import OrtEmbedder

        if threads not in self._ort:
            self._ort[threads] = OrtEmbedder(self.backbone, self.cache, threads=threads).embed
        return self._ort[threads]

    def measure(self, pairs: list[Pair], seconds: float) -> dict[Pair, float]:
        out = {}
        for rt, k in pairs:
            if rt == ORT:
                embed = self.ort(k.threads)
            else:
                self._torch.set_num_threads(k.threads)
                embed = self.torch_embedder.embed
            out[(rt, k)] = run_streams(embed, self.x[:k.batch], k.streams, seconds)
        return out


def served_backbone() -> tuple[str, str]:
    """(backbone, precision) as the service serves them (FSDI_BACKBONE, FSDI_PRECISION)."""
    from app.settings import Settings

    st = Settings()
    return st.backbone, st.precision


def best(rates: dict[Pair, float], rt: str, among: list[Config]) -> Config:
    return max(among, key=lambda k: rates[(rt, k)])


# The service's threads by OS-level name (app/services/threadnames.py); the main thread
# runs the event loop.
STAGES = (("fsdi-infer", "network (inference threads)"),
          ("fsdi-decode", "decode + resize (decode pool)"),
          ("fsdi-results", "results store (writer thread)"))
EVENT_LOOP = "HTTP, multipart, request logic (event loop)"


def add_stage_cpu(acc: dict[str, float], before: dict[int, tuple[str, float]],
                  after: dict[int, tuple[str, float]], pid: int) -> None:
    """Add each thread's CPU seconds between two snapshots to its stage in `acc`."""
    for tid, (name, cpu) in after.items():
        stage = EVENT_LOOP if tid == pid else next(
            (label for prefix, label in STAGES if name.startswith(prefix)), "other threads")
        acc[stage] = acc.get(stage, 0.0) + cpu - before.get(tid, (name, 0.0))[1]


def spread(xs: list[float]) -> str:
    return f"{statistics.mean(xs):7.1f}  ({min(xs):.1f}-{max(xs):.1f})"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--per-request", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20,
                    help="end-to-end load in total, split over the rounds")
    ap.add_argument("--rounds", type=int, default=3,
                    help="end-to-end segments, each between two baseline measurements")
    ap.add_argument("--select-seconds", type=float, default=3,
                    help="per raw configuration and runtime in the selection pass")
    ap.add_argument("--raw-seconds", type=float, default=2,
                    help="per baseline and round in the measurement pass")
    ap.add_argument("--scale", default="10,1000,10000")
    return ap.parse_args()


@dataclass
class Run:
    """Everything one bench run measured, for `report`."""

    a: argparse.Namespace
    st: Any
    served: Config
    configs: list[Config]
    plain: list[Config]  # PyTorch as usually run: one model, its threads on all cores
    counts: list[int]
    selection: dict[Pair, float] = field(default_factory=dict)
    baselines: dict[str, Pair] = field(default_factory=dict)
    est: dict[Pair, list[float]] = field(default_factory=dict)
    decode_turns: list[float] = field(default_factory=list)
    images: int = 0
    busy: float = 0.0
    lat: list[float] = field(default_factory=list)
    client_s: float = 0.0
    stage_cpu: dict[str, float] = field(default_factory=dict)
    enrol_s: float = 0.0
    scale: dict[int, float] = field(default_factory=dict)

    @property
    def e2e(self) -> float:
        return self.images / self.busy

    def rate(self, name: str) -> float:
        return statistics.mean(self.est[self.baselines[name]])


def plan(a: argparse.Namespace) -> Run:
    from app.settings import Settings

    st = Settings()
    served = Config(st.streams, st.stream_threads, st.batch_max_size)
    # The service's own configuration, and the others worth trying on this machine: the
    # baseline for each ratio is the FASTEST raw configuration, not the service's.
    plain = [Config(1, st.threads, 16), Config(1, st.threads, 1)]
    configs = list(dict.fromkeys([
        served, *plain, *(Config(st.threads, 1, b) for b in (1, 2, 4, 8, 16)),
    ]))
    return Run(a, st, served, configs, plain, [int(x) for x in a.scale.split(",")])


def choose_baselines(run: Run, raw: RawNetwork) -> None:
    """Selection: every configuration once, the server not yet started. Picking the
    fastest of several noisy figures favours whichever was lucky, so these figures only
    choose the baselines; they are measured again between the load's segments."""
    a, configs, plain = run.a, run.configs, run.plain
    run.selection = raw.measure([(rt, k) for k in configs for rt in (ORT, TORCH)],
                                a.select_seconds)
    run.baselines = {
        "ONNX Runtime, fastest in the selection": (ORT, best(run.selection, ORT, configs)),
        "ONNX Runtime as the service runs it": (ORT, run.served),
        "PyTorch eager, one model on all cores": (TORCH, best(run.selection, TORCH, plain)),
        "PyTorch eager, fastest in the selection": (TORCH, best(run.selection, TORCH, configs)),
    }
    run.est = {p: [] for p in dict.fromkeys(run.baselines.values())}


def take_turns(run: Run, raw: RawNetwork, srv: Server, c: httpx.Client, key: str,
               files: list[bytes]) -> None:
    """Baselines and end-to-end load take turns (baseline, load, ..., baseline), so drift
    of the shared machine hits both alike. The server idles while the baselines run:
    never two busy runtimes."""
    a = run.a
    for r in range(a.rounds + 1):
        for p, img_s in raw.measure(list(run.est), a.raw_seconds).items():
            run.est[p].append(img_s)
        run.decode_turns.append(decode_cpu_ms(files, raw.backbone.preprocess, a.raw_seconds))
        if r < a.rounds:
            before = srv.thread_times()
            n, dt, seg, cpu = load(srv.url, a.clients, a.per_request, a.seconds / a.rounds,
                                   key)
            add_stage_cpu(run.stage_cpu, before, srv.thread_times(), srv.pid)
            run.images, run.busy, run.lat = run.images + n, run.busy + dt, run.lat + seg
            run.client_s += cpu


def measure(a: argparse.Namespace) -> Run:
    run = plan(a)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        from models.zoo import create_backbone

        bb = create_backbone(run.st.backbone, run.st.precision)
        data.mkdir()
        seed_classes(f"sqlite:///{data / 'fsdi.db'}", bb.version, bb.dim, bb.metric_dim,
                     run.counts)
        del bb
        raw = RawNetwork(data / "onnx", max(k.batch for k in run.configs))
        choose_baselines(run, raw)
        # The load's files, each with a comment of its own as every upload has.
        files = [tagged(f, f"{i:0{TAG}d}") for i, f in enumerate(load_frames())]
        srv = Server(data, {"FSDI_ADMIN_KEY": KEY}).start(timeout=300)
        try:
            with httpx.Client(base_url=srv.url, headers=H, timeout=120) as c:
                enrol_ten(c, "bench")
                machine = c.post("/api/v1/keys", json={"role": "machine", "label": "bench"})
                machine.raise_for_status()
                key = machine.json()["key"]
                load(srv.url, a.clients, a.per_request, 3, key)  # warm-up
                take_turns(run, raw, srv, c, key, files)
                run.enrol_s = time_to_classifiable(c)
            run.scale = scale_latency(srv.url, run.counts, 40)
        finally:
            srv.stop()
    return run


def report_throughput(run: Run) -> tuple[float, float]:
    """Throughput, latency, the raw baselines and the ratios; -> (fastest ORT, torch)."""
    a, e2e = run.a, run.e2e
    # The fastest runtime configuration is the faster of its candidates as measured again.
    ort_rate = max(run.rate("ONNX Runtime, fastest in the selection"),
                   run.rate("ONNX Runtime as the service runs it"))
    torch_rate = max(run.rate("PyTorch eager, fastest in the selection"),
                     run.rate("PyTorch eager, one model on all cores"))
    lat = run.lat
    print(f"\n/classify end to end: {e2e:.1f} img/s  ({a.clients} clients x "
          f"{a.per_request} JPEG 640x480 per request, {len(lat)} requests in {a.rounds} "
          f"segments; service: {run.served})")
    print(f"  request latency p50 {pct(lat, 50) * 1000:.0f} ms  p95 {pct(lat, 95) * 1000:.0f} ms"
          f"  p99 {pct(lat, 99) * 1000:.0f} ms")
    print(f"raw network on preprocessed uint8 input, selection pass, img/s "
          f"({a.select_seconds:g} s each):")
    ort_label = f"ORT {run.st.precision}"
    print(f"  {'configuration':42s} {ort_label:>14s} {'torch fp32':>12s}")
    for k in run.configs:
        mark = "  <- service" if k == run.served else ""
        print(f"  {str(k):42s} {run.selection[(ORT, k)]:14.1f} "
              f"{run.selection[(TORCH, k)]:12.1f}{mark}")
    print(f"baselines measured again, {a.rounds + 1} x {a.raw_seconds:g} s between the "
          f"end-to-end segments, img/s mean (min-max):")
    for name, (rt, k) in run.baselines.items():
        print(f"  {name + ' (' + str(k) + ')':80s} {spread(run.est[(rt, k)])}")
    print(f"ratio e2e / fastest raw ORT = {e2e / ort_rate:.2f}   (target >= 0.8)")
    print(f"ratio e2e / raw ORT as the service runs it = "
          f"{e2e / run.rate('ONNX Runtime as the service runs it'):.2f}")
    print(f"ratio e2e / PyTorch eager, one model on all cores = "
          f"{e2e / run.rate('PyTorch eager, one model on all cores'):.2f}   (target >= 3)")
    print(f"ratio e2e / fastest PyTorch eager (any configuration above) = "
          f"{e2e / torch_rate:.2f}")
    print(f"ratio fastest raw ORT / fastest PyTorch eager = {ort_rate / torch_rate:.2f}"
          f"   (no service can pass this against the fastest torch)")
    return ort_rate, torch_rate


def report_cpu(run: Run) -> None:
    """The machine's CPU per image during the load, by thread (Linux: from /proc)."""
    net_stage = STAGES[0][1]
    if not run.stage_cpu.get(net_stage):
        return
    net, images = run.stage_cpu[net_stage], run.images
    print("server CPU per image during the load, by thread "
          "(ms; the network's own cost is the baseline):")
    for stage, cpu in sorted(run.stage_cpu.items(), key=lambda kv: -kv[1]):
        share = "" if stage == net_stage else f"   {cpu / net * 100:3.0f}% of the network's"
        print(f"  {stage:46s} {cpu / images * 1000:6.2f}{share}")
    print(f"  {'load client (the bench, on the same cores)':46s} "
          f"{run.client_s / images * 1000:6.2f}   {run.client_s / net * 100:3.0f}% of the "
          f"network's")
    machine_cores = len(os.sched_getaffinity(0))
    had = machine_cores * run.busy  # CPU seconds the machine had
    rest = had - sum(run.stage_cpu.values()) - run.client_s
    print(f"  {'rest of the machine (kernel, idle)':46s} {rest / images * 1000:6.2f}"
          f"   (all {machine_cores} cores: {had / images * 1000:.2f} ms per image)")
    cores = run.served.streams * run.served.threads
    raw_ms = cores * 1000 / run.rate("ONNX Runtime as the service runs it")
    print(f"  (raw ORT as the service runs it: {raw_ms:.2f} ms of CPU per image, "
          f"all {cores} cores busy)")


def report_decode_and_scale(run: Run, ort_rate: float) -> None:
    """What the target leaves for the service's own work on this machine (the network's
    CPU per image at the fastest raw rate against the decode step), enrolment latency and
    classify latency by class count."""
    a = run.a
    net_ms = run.st.threads * 1000 / ort_rate
    dec_ms = statistics.mean(run.decode_turns)
    print(f"decode step alone (the service's own function: sha256, JPEG decoding at a reduced "
          f"DCT scale, resize; one thread, {a.rounds + 1} x {a.raw_seconds:g} s between the "
          f"segments): {dec_ms:.2f} ms of CPU per image")
    print(f"  = {dec_ms / net_ms * 100:.0f}% of the fastest raw network's {net_ms:.2f} ms per "
          f"image: if nothing else cost anything, e2e / fastest raw ORT could reach "
          f"{net_ms / (net_ms + dec_ms):.2f} on this machine; at 0.8, HTTP, multipart, request "
          f"logic, the results store and the client share {net_ms / 0.8 - net_ms - dec_ms:.2f} "
          f"ms per image")
    print(f"enrol 5 images -> classifiable: {run.enrol_s * 1000:.0f} ms   (target < 1000 ms)")
    base = run.scale[run.counts[0]]
    for n in run.counts:
        print(f"classify latency, {n:>6} classes: {run.scale[n] * 1000:.1f} ms"
              f"   ({run.scale[n] / base:.2f}x the {run.counts[0]}-class latency)")


def main() -> None:
    run = measure(parse_args())
    ort_rate, _ = report_throughput(run)
    report_cpu(run)
    report_decode_and_scale(run, ort_rate)


if __name__ == "__main__":
    main()
