"""`humanim models fetch|list|verify`: the command-line face of the model store (humanim.stages.model_store)."""
from __future__ import annotations

import sys

import click

from humanim.stages import model_store


def _size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "?"
    return f"{num_bytes / 1e6:.1f} MB"


@click.group()
def models() -> None:
    """Fetch, list and verify the model files that stages load."""


@models.command()
@click.argument("names", nargs=-1)
@click.option("--all", "fetch_all", is_flag=True, help="Fetch every file the registry knows.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def fetch(names: tuple[str, ...], fetch_all: bool, quiet: bool) -> None:
    """Download the named files (or all) into $HUMANIM_MODELS, else the user cache, checking each sha256."""
    if fetch_all == bool(names):
        raise click.UsageError("give one or more NAMEs, or --all (see `humanim models list`)")
    wanted = sorted(model_store.REGISTRY) if fetch_all else list(names)
    try:
        paths = model_store.fetch(wanted, progress=not quiet)
    except model_store.ModelStoreError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    for name, path in zip(wanted, paths):
        click.echo(f"{name}: {path}")
        click.echo(f"  licence: {model_store.entry(name).licence}")


@models.command(name="list")
def list_models() -> None:
    """Every file of the registry: present or not, licence, size and path."""
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "present", "licence", "size", "path")
    default_folder = model_store.store_dirs()[0][0]
    for name in sorted(model_store.REGISTRY):
        path = model_store.locate(name)
        size = path.stat().st_size if path else model_store.entry(name).size
        table.add_row(name, "yes" if path else "no", model_store.entry(name).licence, _size(size),
                      str(path or default_folder / name))
    Console().print(table)


@models.command()
def verify() -> None:
    """Re-check the sha256 of every present file; exits non-zero when one is corrupt."""
    checks = model_store.verify()
    if not checks:
        places = ", ".join(f"{folder} ({origin})" for folder, origin in model_store.store_dirs())
        click.echo(f"no model files present in {places}")
        return
    for check in checks:
        click.echo(f"{'ok ' if check.ok else 'BAD'} {check.name}: {check.path}: {check.message}",
                   err=not check.ok)
    bad = [check.name for check in checks if not check.ok]
    if bad:
        click.echo(f"{len(bad)} corrupt or unverifiable file(s): {', '.join(bad)}; delete them and run "
                   f"`humanim models fetch {' '.join(bad)}`", err=True)
        sys.exit(1)
