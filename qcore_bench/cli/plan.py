"""``validate``, ``plan`` and ``ls``: what a suite holds and where it stands, what the registries hold."""

from __future__ import annotations

import fnmatch
from collections import Counter

import click

from ..registry import GROUPS, registry
from .common import RESULTS, claim_timeout_arg, fail, suite_cells

STATES = ("done", "pending", "failed", "running", "interrupted", "damaged")
SHOWN = ("done", "pending", "failed")  # always counted, even at 0

@click.command()
@click.argument("suite", type=click.Path())
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def validate(suite: str, overrides: tuple[str, ...]) -> None:
    """Check SUITE and print its number of cells; nothing runs."""
    spec, cells = suite_cells(suite, overrides, check_data=True)
    click.echo(f"{suite}: ok, suite '{spec.name}' has {len(cells)} cells")


@click.command()
@click.argument("suite", type=click.Path())
@RESULTS
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def plan(suite: str, results: str, overrides: tuple[str, ...]) -> None:
    """One line per cell of SUITE with its status in the results folder.

    pending, running (with its holder), interrupted (resumes), failed (with the reason),
    damaged (a result whose folder does not verify, with the file: `run` finishes it again),
    done; then the stored cells of this suite that it no longer contains.
    """
    from ..claims import describe
    from ..loggers import config_label
    from ..store import Store

    spec, cells = suite_cells(suite, overrides, check_data=True)
    store = Store(results, claim_timeout_arg(None))
    rows, counts = [], Counter()
    for c in cells:
        status = store.status(c.id)
        counts[status] += 1
        note = ""
        if status == "failed":
            note = f"  ({store.read_status(c.id).get('reason', '?')})"
        elif status == "running":
            note = f"  ({describe(store.holder(c.id) or {})})"
        elif status == "damaged":
            note = f"  ({store.damage(c.id)})"
        rows.append([c.id, c.dataset.label, c.model_label, c.bits, f"{c.fraction:g}", c.noise.label, c.method.name,
                     str(c.seed), status + note])
    header = ["id", "dataset", "model", "bits", "fraction", "noise", "method", "seed", "status"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:  # columns as wide as their longest entry: long data set names stay aligned
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[-1])
    click.echo(f"{len(cells)} cells: " + ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s] or s in SHOWN))
    ids = {c.id for c in cells}
    gone = {cid: cfg for cid, cfg in store.stored().items() if cid not in ids and cfg.get("suite") == spec.name}
    if gone:
        click.echo(f"\n{len(gone)} stored cells of suite '{spec.name}' are not in it any more "
                   "(edited since they ran; `run --clear ID` discards one):")
        for cid, cfg in sorted(gone.items()):
            click.echo(f"{cid}  {config_label(cfg) or '(config of an older version)'}  {store.status(cid)}")


@click.command("ls")
@click.argument("kind", type=click.Choice([*GROUPS, "methods"]), required=False)
@click.argument("pattern", default="*")
@click.option("--suite", "suite_path", type=click.Path(dir_okay=False), default=None,
              help="methods: also the presets in the methods/ folder beside this suite.")
def ls(kind: str, pattern: str, suite_path: str | None) -> None:
    """What a registry holds (selectors, datasets, models, methods), with each entry's source.

    Method presets come from the built-in methods/ folder, the folders in $QCORE_METHODS and,
    with --suite, the methods/ folder beside that suite. Without KIND: every kind and its names.
    """
    if kind is None:
        _ls_all(suite_path)
        return
    if kind == "methods":
        from ..presets import PresetError, presets
        from ..registry import natural_key

        try:
            found = presets(suite_path)
        except PresetError as exc:
            fail(str(exc))
        names = sorted(fnmatch.filter(found, pattern), key=natural_key)
        if not names:
            fail(f"no methods match '{pattern}'")
        for name in names:
            p = found[name]
            click.echo(f"{name:24} {p.selector:20} {p.source:10} {p.description}")
        return
    reg = registry(kind)
    names = reg.names(pattern)
    deepcore: list[str] = []
    if kind == "selectors":  # deepcore:<Method> for each method of a DeepCore checkout on PYTHONPATH
        from ..selectors.deepcore import SOURCE, available_methods

        deepcore = fnmatch.filter([f"deepcore:{m}" for m in available_methods()], pattern)
    if not names and not deepcore:
        fail(f"no {kind} match '{pattern}'")
    for name in names:
        entry = reg.entries[name]
        click.echo(f"{name:24} {entry.package:16} {entry.target}")
    for name in deepcore:
        click.echo(f"{name:24} {SOURCE:16} deepcore.methods.{name.removeprefix('deepcore:')}")


def _ls_all(suite_path: str | None) -> None:
    """One line per kind: how many entries and their names; ``ls KIND`` shows where each comes from."""
    from ..presets import PresetError, presets
    from ..registry import natural_key

    try:
        methods = sorted(presets(suite_path), key=natural_key)
    except PresetError as exc:
        fail(str(exc))
    for kind, names in [*((k, registry(k).names()) for k in GROUPS), ("methods", methods)]:
        click.echo(f"{kind:10} {len(names):3}  {', '.join(names)}")
    click.echo("`qcore-bench ls KIND [PATTERN]` lists each entry with the package or file it comes from.")
