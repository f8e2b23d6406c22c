"""The `fsdi` command: serve, keys, and the model workflows."""

from __future__ import annotations

import os

# One busy runtime on the cores: BLAS in the request path (prototype distances) stays
# single-threaded so its spinning threads never fight ONNX Runtime. Set before numpy loads.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import typer  # noqa: E402

from app.settings import get_settings  # noqa: E402

cli = typer.Typer(help="FSDI — few-shot defect inspection.", no_args_is_help=True)
keys_cli = typer.Typer(help="Manage API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")


@cli.command()
def serve(host: str = "127.0.0.1", port: int = 8000,
          workers_limit: int = typer.Option(256, help="uvicorn concurrency limit")) -> None:
    """Start the service on its embedded defaults (SQLite + blobs under FSDI_DATA_DIR)."""
    import uvicorn

    from app.main import create_app

    uvicorn.run(create_app(), host=host, port=port, limit_concurrency=workers_limit,
                timeout_keep_alive=5, log_level="info")


@keys_cli.command("create")
def keys_create(role: str = typer.Option(..., help="admin, operator or machine"),
                label: str = "") -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    from app.services.keys import ROLES, create_key
    from storage.db import make_engine, make_sessionmaker
    from storage.migrate import upgrade

    if role not in ROLES:
        raise typer.BadParameter(f"role must be one of {', '.join(ROLES)}")
    s = get_settings()
    s.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(s.resolved_database_url)
    upgrade(engine)
    with make_sessionmaker(engine).begin() as db:
        row, key = create_key(db, role, label)
        typer.echo(f"id={row.id} role={row.role}\n{key}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
