"""The `fsdi` command: serve, keys, and the model workflows."""

from __future__ import annotations

import os

# One busy runtime on the cores: BLAS in the request path (prototype distances) stays
# single-threaded so its spinning threads never fight ONNX Runtime. Set before numpy loads.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import typer  # noqa: E402

from app.settings import get_settings  # noqa: E402

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

cli = typer.Typer(help="FSDI — few-shot defect inspection.", no_args_is_help=True,
                  rich_markup_mode="markdown")  # markdown: a paragraph reflows as one
keys_cli = typer.Typer(help="Manage API keys.", no_args_is_help=True, rich_markup_mode="markdown")
cli.add_typer(keys_cli, name="keys")
results_cli = typer.Typer(help="Result rows: archive them out of the database.",
                          no_args_is_help=True, rich_markup_mode="markdown")
cli.add_typer(results_cli, name="results")
blobs_cli = typer.Typer(help="Image storage: where support and classified images live.",
                        no_args_is_help=True, rich_markup_mode="markdown")
cli.add_typer(blobs_cli, name="blobs")


@cli.command()
def serve(host: str = "127.0.0.1", port: int = 8000,
          workers_limit: int | None = typer.Option(
              None, help="requests in progress at once, 503 past it (FSDI_MAX_IN_FLIGHT, "
              "256); health probes never count")) -> None:
    """Start the service on its embedded defaults (SQLite + blobs under FSDI_DATA_DIR)."""
    from app.main import create_app
    from app.server import run

    settings = get_settings()
    if workers_limit is not None:
        settings = settings.model_copy(update={"max_in_flight": workers_limit})
    run(create_app(settings), settings, host, port)


def _key_sessions() -> sessionmaker[Session]:
    """A migrated database of the configured FSDI_DATABASE_URL / FSDI_DATA_DIR."""
    from storage.migrate import open_migrated

    s = get_settings()
    s.data_dir.mkdir(parents=True, exist_ok=True)
    return open_migrated(s.resolved_database_url)[1]


@keys_cli.command("create")
def keys_create(role: str = typer.Option(..., help="admin, operator or machine"),
                label: str = "",
                groups: str | None = typer.Option(
                    None, help="comma-separated groups the key reaches (default: every "
                               "group)")) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    import re

    from app.schemas import GROUP_PATTERN
    from app.services.keys import ROLES, issue

    if role not in ROLES:
        raise typer.BadParameter(f"role must be one of {', '.join(ROLES)}")
    scoped = None if groups is None else [g.strip() for g in groups.split(",") if g.strip()]
    if scoped is not None and (not scoped or not all(
            len(g) <= 64 and re.fullmatch(GROUP_PATTERN, g) for g in scoped)):
        raise typer.BadParameter("groups: 1-64 letters, digits and _ . : - each, "
                                 "separated by commas", param_hint="--groups")
    created = issue(_key_sessions(), role, label, "cli", scoped)
    scope = "" if created.groups is None else f" groups={','.join(created.groups)}"
    typer.echo(f"id={created.id} role={created.role}{scope}\n{created.key}")


@keys_cli.command("list")
def keys_list() -> None:
    """List the stored keys (id, role, state, prefix, created, groups, label); secrets
    are never shown."""
    from app.services.keys import listing

    for k in listing(_key_sessions()):
        state = "revoked" if k.revoked else "active"
        reach = "all groups" if k.groups is None else ",".join(k.groups)
        typer.echo(f"{k.id}\t{k.role}\t{state}\t{k.prefix}…\t"
                   f"{k.created_at:%Y-%m-%d %H:%M}Z\t{reach}\t{k.label}")


@keys_cli.command("revoke")
def keys_revoke(key_id: int = typer.Argument(..., help="the id from `fsdi keys list`")) -> None:
    """Revoke a key at once; running servers refuse it from their next replica sync."""
    from app.errors import NotFound
    from app.services.keys import revoke

    try:
        revoke(_key_sessions(), key_id, "cli")
    except NotFound as e:
        typer.echo(e.message, err=True)
        raise typer.Exit(1) from e
    typer.echo(f"revoked key {key_id}")


@cli.command()
def train(
    out: Path = typer.Option(Path("models/weights/fsdi_lite0_meta.safetensors"),
                             help="where the trained head (safetensors) goes"),
    cache: Path = typer.Option(Path("runs/cache"), help="descriptor cache directory"),
    episodes: int = 1500, seed: int = 0, l2sp: float = 0.3,
    task_aug: str = typer.Option("invert", help="invert or none"),
    synth_per_class: int = 150, fmnist_per_class: int = 200,
    augment_views: int = typer.Option(0, help="augmented copies of each meta-train image"),
    resume: bool = typer.Option(True, help="continue from OUT.ckpt.pt if present"),
    method: str = typer.Option("protonet", help="protonet trains the backbone's head; any "
                               "other registered method trains its own meta-parameters "
                               "over the shipped head's embeddings"),
    method_episodes: int = 1000,
    verify_calibration: bool = typer.Option(
        False, "--verify-calibration", help="only fit /verify's global calibration (the "
        "Siamese pair logit on the meta-training sources) into "
        "models/weights/methods/siamese.verify.json"),
) -> None:
    """Meta-train with episodes (see models/MODEL_CARD.md)."""
    if verify_calibration:
        from models.verify import GLOBAL_PATH
        from models.verify_eval import fit_global

        cal = fit_global(get_settings().backbone, seed=seed, cache_dir=cache / "onnx")
        typer.echo(f"wrote {GLOBAL_PATH}: slope {cal.slope:.4f}, intercept "
                   f"{cal.intercept:.4f} ({cal.pairs:,} pairs)")
        return
    from models.train import TrainConfig
    from models.train import train as run

    cfg = TrainConfig(episodes=episodes, seed=seed, l2sp=l2sp, task_aug=task_aug,
                      synth_per_class=synth_per_class, fmnist_per_class=fmnist_per_class,
                      augment_views=augment_views)
    if method == "protonet":
        path = run(cfg, out, cache, resume=resume)
        typer.echo(f"wrote {path} (log: {path.with_suffix('.log.jsonl')})")
        return
    from models.methods.training import train_method

    path = train_method(method, cfg, cache, out, method_episodes)
    typer.echo(f"wrote {path}")


evaluate_cli = typer.Typer(
    help="Measure the served decision on held-out data: `fsdi evaluate` alone runs "
         "`synthetic`.", invoke_without_command=True, rich_markup_mode="markdown")
cli.add_typer(evaluate_cli, name="evaluate")

HEAD = Path("models/weights/fsdi_lite0_meta.safetensors")
Out = typer.Option(Path("runs/eval"), help="JSON, Markdown and PNG go here")
Cache = typer.Option(Path("runs/cache"), help="features and ONNX exports kept between runs")
Shots = typer.Option("1,5,10", help="support images per class, comma-separated")


def _shots(shots: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in shots.split(","))
    except ValueError:
        raise typer.BadParameter("comma-separated numbers, e.g. 1,5,10") from None


@evaluate_cli.callback()
def evaluate(ctx: typer.Context) -> None:
    """Measure few-shot accuracy and rejection on held-out classes."""
    if ctx.invoked_subcommand is None:
        synthetic(head=HEAD, out=Path("runs/eval"), cache=Path("runs/cache"), episodes=600,
                  shots="1,5,10", seed=0, synth_per_class=150, fmnist_per_class=200)


@evaluate_cli.command()
def synthetic(head: Path = typer.Option(HEAD),
              out: Path = Out, cache: Path = Cache, episodes: int = 600, shots: str = Shots,
              seed: int = 0, synth_per_class: int = 150, fmnist_per_class: int = 200) -> None:
    """N-way K-shot on held-out synthetic defect types and Fashion-MNIST classes: the
    shipped head vs the frozen ImageNet global pool vs a random-init network, on the same
    episodes; then unknown rejection with the service's calibration."""
    from models.evaluate import evaluate as run
    from models.evaluate import head_embed, rejection_report, unit, write_reports
    from models.meta import global_pool
    from models.train import TrainConfig, feature_sets

    shot_counts = _shots(shots)
    cfg = TrainConfig(seed=seed, synth_per_class=synth_per_class,
                      fmnist_per_class=fmnist_per_class)
    data, rand = feature_sets(cfg, cache), feature_sets(cfg, cache, random_init=True)
    embed = head_embed(head)
    emb, labels = {}, {}
    for b in ("synth_eval", "fmnist_eval", "binary_eval"):
        emb[b] = {"fsdi_lite0_meta": embed(data[f"{b}_x"]),
                  "imagenet_global_pool": unit(global_pool(data[f"{b}_x"])),
                  "random_init_global_pool": unit(global_pool(rand[f"{b}_x"]))}
        labels[b] = data[f"{b}_y"]
    # binary_eval: OK vs defective (held-out defect types), 2-way, inside one surface.
    rows = run(emb, labels, shot_counts, episodes, 5, 15,
               seed + 1000, setup={"binary_eval": (2, data["binary_eval_g"])})
    write_reports(rows, out)
    typer.echo((out / "evaluation.md").read_text())
    typer.echo(rejection_report(data, embed, get_settings().serving_config(), shot_counts,
                                episodes // 2, seed + 2000, out))


@evaluate_cli.command()
def real(out: Path = Out, cache: Path = Cache, episodes: int = 300, shots: str = Shots,
         seed: int = 0) -> None:
    """Real images: the ELPV mono development set (needs `pip install elpv-dataset`),
    2-way good vs defective, the served decision against the frozen baseline on the same
    episodes."""
    from models.evaluate import real_report

    typer.echo(real_report(out, get_settings().backbone, _shots(shots), episodes, seed=seed,
                           cache_dir=cache / "onnx", rank_by=get_settings().rank_by))


@evaluate_cli.command()
def anomaly(out: Path = Out, cache: Path = Cache, seed: int = 0,
            good: str = typer.Option("1,5,20,50", help="good images enrolled")) -> None:
    """Good vs defective from good parts alone, through the served code: held-out
    synthetic defect types, and the ELPV mono development set where elpv-dataset is
    installed; the service against the global-pool baseline; and which defect in a group
    with good parts (synthetic types: defect_types.*)."""
    from models.patchcore.evaluate import defect_type_report, report

    typer.echo(report(out, _shots(good), seed=seed, backbone=get_settings().backbone,
                      cache_dir=cache / "onnx"))
    typer.echo(defect_type_report(out, seed=seed, backbone=get_settings().backbone,
                                  cache_dir=cache / "onnx"))


@evaluate_cli.command()
def scores(out: Path = Out, cache: Path = Cache, episodes: int = 200, shots: str = Shots,
           seed: int = 0) -> None:
    """Are the served scores probabilities? ECE and a reliability plot, temperature fixed
    vs fitted per group, on synthetic, Fashion-MNIST and ELPV (where installed)."""
    from models.evaluate import scores_report

    typer.echo(scores_report(out, get_settings().backbone, _shots(shots), episodes,
                             seed=seed, cache_dir=cache / "onnx",
                             rank_by=get_settings().rank_by))


@evaluate_cli.command()
def methods(name: str = typer.Argument("all", help="'all', or one method's name"),
            head: Path = typer.Option(HEAD), out: Path = Out, cache: Path = Cache,
            episodes: int = 600, shots: str = Shots, seed: int = 0) -> None:
    """Every few-shot method (or one) on the same episodes, with time per task."""
    from models.methods.training import evaluate_all

    typer.echo(evaluate_all(name, head, cache, out, episodes, _shots(shots), seed))


@evaluate_cli.command()
def verify(out: Path = Out, cache: Path = Cache, episodes: int = 100, shots: str = Shots,
           seed: int = 0) -> None:
    """/verify's same-or-different on held-out pairs: the group's own calibration against
    the global one, same episodes (synthetic held-out types, Fashion-MNIST held-out
    classes, the ELPV mono cells where installed)."""
    from models.verify_eval import verify_report

    typer.echo(verify_report(out, get_settings().backbone, _shots(shots), episodes,
                             seed=seed, cache_dir=cache / "onnx"))


@evaluate_cli.command()
def precision(out: Path = Out, cache: Path = Cache, episodes: int = 600, shots: str = Shots,
              seed: int = 0, synth_per_class: int = 150, fmnist_per_class: int = 200) -> None:
    """The served network at INT8 against fp32: accuracy and rejection, same episodes."""
    from models.evaluate import precision_report
    from models.train import TrainConfig, eval_images

    images, groups = eval_images(TrainConfig(seed=seed, synth_per_class=synth_per_class,
                                             fmnist_per_class=fmnist_per_class))
    typer.echo(precision_report(get_settings().backbone, "int8", images, groups,
                                get_settings().serving_config(), _shots(shots), episodes,
                                seed, cache / "onnx", out))


@cli.command()
def check(
    images: Path = typer.Argument(..., metavar="FOLDER", help="a folder with one sub-folder "
                                  "of images per class, named as the class"),
    url: str = typer.Option("http://127.0.0.1:8000", help="the running service"),
    key: str = typer.Option(..., envvar="FSDI_CHECK_KEY",
                            help="an admin key (the check enrols and deletes classes)"),
    good: str = typer.Option("good", help="the sub-folder holding good parts, enrolled "
                             "as a good class (if there is one)"),
    shots: str = "1,5,10", episodes: int = 100, queries: int = 15, seed: int = 0,
    out: Path = typer.Option(Path("runs/check"), help="JSON, Markdown and PNG go here"),
    timeout: float = typer.Option(120.0, help="seconds per request"),
    batch: int = typer.Option(32, min=1, help="files per request at most (the service's "
                              "FSDI_MAX_FILES_PER_REQUEST is 64 by default)"),
) -> None:
    """Measure a running service on your own labelled images, through its REST API only.

    Each episode enrols K images per class into a fresh group, classifies Q more per
    class, and deletes the group's classes again; the table gives the label's and the
    OK/NG verdict's accuracy (95% CIs over episodes) and the score's calibration error.
    """
    import httpx

    from app.check import CheckError, LabelledFolder, Service, report, run_check

    try:
        folder = LabelledFolder.read(images, good)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                          timeout=timeout) as client:
            results = run_check(Service(client), folder,
                                tuple(int(s) for s in shots.split(",")), episodes,
                                queries, seed, batch=batch)
    except (CheckError, httpx.HTTPError) as exc:
        typer.echo(f"check failed: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(report(results, folder, images, out))


@cli.command()
def demo(
    url: str = typer.Option("http://127.0.0.1:8000", help="the running service"),
    key: str = typer.Option(..., envvar="FSDI_DEMO_KEY",
                            help="an admin key (the one `fsdi serve` printed)"),
    out: Path = typer.Option(Path("demo-images"), help="where the demo's images go"),
    timeout: float = typer.Option(120.0, help="seconds per request"),
) -> None:
    """A demo line on a running service: group `demo` with good parts, scratches and
    stains drawn by FSDI's own surface generator, and a dozen parts to classify in
    `demo-images/`, named for what they are.

    Then open the console (Inspect, group demo, drop `demo-images/scratch-01.png`) or
    classify with curl, as the README's walk does.
    """
    import httpx

    from app.check import CheckError, Service
    from app.demo import GROUP, enrol, write_images

    say = typer.echo
    say(f"writing the demo images to {out}/")
    images = write_images(out)
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                          timeout=timeout) as client:
            service = Service(client)
            say(f"enrolling group {GROUP!r} on {url}")
            enrol(service, images, say=say)
            first = sorted(n for n, k in images.queries.items() if k != "ok")[0]
            (res,) = service.classify(GROUP, [out / first], 1)
    except (CheckError, httpx.HTTPError) as exc:
        typer.echo(f"demo failed: {exc}", err=True)
        raise typer.Exit(2) from exc
    say(f"{first}: verdict {res.get('verdict')}, label {res.get('label')}, "
        f"anomaly {res['anomaly']['score']:.3f} (threshold {res['anomaly']['threshold']:.3f})"
        if "anomaly" in res else f"{first}: {res.get('label')}")
    say(f"\nready. {len(images.queries)} parts to try: {out}/ok-*.png, {out}/scratch-*.png, "
        f"{out}/stain-*.png\n  console: {url}/  (Inspect, group {GROUP})\n"
        f"  curl:    curl -s -H \"Authorization: Bearer $KEY\" -F files=@{out}/{first} "
        f"\"{url}/api/v1/classify?group={GROUP}&heatmap=true\"")


@cli.command()
def watch(
    folder: Path = typer.Argument(..., metavar="DIR", help="the folder the camera writes to"),
    group: str = typer.Option(..., help="the group its parts are classified in"),
    url: str = typer.Option("http://127.0.0.1:8000", help="the running service"),
    key: str = typer.Option(..., envvar="FSDI_WATCH_KEY",
                            help="a key of role machine or above (scoped to the group: "
                            "--groups when it is created)"),
    settle: float = typer.Option(1.0, min=0.0, help="seconds a file's size and time must "
                                 "stay unchanged before it counts as written"),
    once: bool = typer.Option(False, help="stop when the folder holds no image"),
) -> None:
    """A hot folder: classify each image that appears in DIR once it is completely
    written; move it to DIR/done/ with NAME.json (the answer) beside it, or to
    DIR/failed/ with NAME.error.txt. Each file is classified once, across restarts of the
    watcher or the service; while the service is away it waits and tries again."""
    from app.watch import main

    if not folder.is_dir():
        typer.echo(f"{folder} is not a directory", err=True)
        raise typer.Exit(2)
    raise typer.Exit(main(folder, group, url, key, settle, once))


@cli.command()
def reembed(batch: int = 32, prune: bool = typer.Option(
        False, help="drop embeddings of other versions once every image has the new one")
            ) -> None:
    """Recompute every support image's embedding for the configured backbone.

    Batched, resumable, with a progress bar.
    """
    from app.services.reembed import reembed as run

    done, left = run(get_settings(), batch=batch, prune=prune)
    typer.echo(f"embedded {done} image(s); {left} still missing")


@blobs_cli.command("migrate")
def blobs_migrate(
    to: str = typer.Option(..., help="s3://BUCKET/PREFIX (FSDI_S3_ENDPOINT_URL names a "
                           "non-AWS server) or a local directory"),
    workers: int = typer.Option(8, min=1, max=64, help="objects copied at once"),
) -> None:
    """Copy the configured store's image bytes (FSDI_BLOB_URL, unset: FSDI_DATA_DIR) to
    another store; then point FSDI_BLOB_URL at it.

    Each object is read back from the target and checked by sha256. Safe while the
    service runs (the source is only read); resumable: run it again and only what is
    missing or has grown is copied (README, "Many hosts").
    """

    from models.progress import progress
    from storage.objects import StoreUnavailable, open_objects
    from storage.transfer import copy_store

    s = get_settings()
    try:
        src = open_objects(s.blob_url, s.data_dir, s.s3_endpoint_url)
        dst = open_objects(to, s.data_dir, s.s3_endpoint_url)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if src.describe() == dst.describe():
        raise typer.BadParameter(f"{to} is the store already configured")
    typer.echo(f"copying image bytes from {src.describe()} to {dst.describe()}")
    with progress(unit="B", unit_scale=True, desc="objects") as bar:
        try:
            report = copy_store(src, dst, workers, progress=bar.update)
        except StoreUnavailable as exc:
            typer.echo(f"stopped: {exc}; run the command again to resume", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"copied {report.copied} object(s) ({report.copied_bytes / 1e6:.1f} MB), "
               f"{report.already} already there, {report.gone} removed meanwhile")
    for key in report.corrupt:
        typer.echo(f"corrupt at the source (its bytes do not match its sha256): {key}",
                   err=True)
    for key in report.mismatched:
        typer.echo(f"read back different from the target: {key}", err=True)
    if not report.ok:
        raise typer.Exit(1)


@results_cli.command("archive")
def results_archive(
    before: str = typer.Option(..., help="archive results created before this day or time "
                               "(ISO 8601, e.g. 2026-11-01; a date is midnight UTC)"),
    to: str = typer.Option(..., help="where the Parquet files go: a local directory or "
                           "s3://BUCKET/PREFIX (FSDI_S3_ENDPOINT_URL for a non-AWS server)"),
    batch: int = typer.Option(1000, min=100, help="rows deleted per transaction"),
    duty: float = typer.Option(0.2, min=0.05, max=1.0, help="share of the time it works; "
                               "it rests the rest, so classification on the same machine "
                               "keeps its latency"),
) -> None:
    """Move result rows (with their latest feedback) older than --before out of the
    database into Parquet files, partitioned by group and day; each file is read back and
    counted before its rows are deleted, a batch at a time, while the service runs.

    Read them with DuckDB, pandas or Spark as they stand (README, "Operations").
    """
    from datetime import UTC, datetime

    from models.progress import progress
    from storage.archive import archive
    from storage.objects import StoreUnavailable, open_objects

    try:
        cutoff = datetime.fromisoformat(before)
    except ValueError:
        raise typer.BadParameter(f"--before {before!r} is not an ISO 8601 date") from None
    if cutoff.tzinfo is None:
        cutoff = cutoff.replace(tzinfo=UTC)
    s = get_settings()
    try:
        store = open_objects(to, s.data_dir, s.s3_endpoint_url)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    with progress(unit="rows", desc="archived") as bar:
        try:
            report = archive(_key_sessions(), store, cutoff, batch, progress=bar.update,
                             duty=duty)
        except (StoreUnavailable, RuntimeError) as exc:
            typer.echo(f"stopped: {exc}; run the command again to resume", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"archived {report.rows} result(s) in {len(report.files)} file(s) under "
               f"{store.describe()}, deleted {report.deleted} from the database")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
