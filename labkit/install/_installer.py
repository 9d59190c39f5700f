"""Installing products: each under a cross-process lock, from the first source that works; all of them in parallel."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..errors import BuildError, MissingTool, ParameterError
from ._build import build
from ._prebuilt import fetch_prebuilt
from ._products import PRODUCTS, TOOLS, Product, cache_root, installed_source
from ._products import say as _say
from ._source import SourceChoice, current_choice
from ._tools import bao_binary, postgres_bindir


def install_product(product: Product, choice: SourceChoice, *, force: bool = False) -> str:
    """Install one product from the first source in ``choice`` that works; return that source.

    Under a cross-process lock per product (``<cache>/locks/<name>-<version>/lock``, :mod:`labkit._lock`): two
    ``labkit install``/``up`` on a fresh machine would otherwise both build into the same ``.tmp`` paths. The one
    that waited finds the product built and uses it (unless ``force``)."""
    from .. import _lock

    locks = cache_root() / "locks" / f"{product.name}-{product.version}"
    locks.mkdir(parents=True, exist_ok=True)
    with _lock.locked(locks, f"labkit install {product.name}", wait=float(os.environ.get("VSOLAB_INSTALL_WAIT", "3600")),
                      subject=f"no other labkit process is installing {product.name} {product.version} into {product.dir}"):
        if product.built() and not force:
            return installed_source(product)
        return _install_product(product, choice, force=force)


def _install_product(product: Product, choice: SourceChoice, *, force: bool = False) -> str:
    failures: list[tuple[str, BuildError | MissingTool]] = []
    for i, src in enumerate(choice.order):
        try:
            if src == "prebuilt":
                fetch_prebuilt(product, force=force)
            else:
                build(product, force=force)
            return src
        except (BuildError, MissingTool) as exc:
            failures.append((src, exc))
            if i + 1 < len(choice.order):
                _say(f"  {product.name}: {src} failed, falling back to {choice.order[i + 1]}: {exc.checked}")
    if len(failures) == 1:
        raise failures[0][1]
    last = failures[-1][1]
    raise BuildError(
        f"Checked every install source for {product.name} {product.version} ({', then '.join(choice.order)}): each failed.",
        last.fixes,
        detail="\n\n".join(f"[{src}] {exc}" for src, exc in failures),
    ) from last


def binaries(build_missing: bool = False) -> dict[str, Path]:
    """Paths of every lab binary; install missing Go binaries if asked (source ``auto``), else explain."""
    paths: dict[str, Path] = {}
    for product in PRODUCTS.values():
        if not product.built():
            if not build_missing:
                raise MissingTool(
                    f"Checked the binary cache {product.dir} for {product.name} {product.version}: it is not there yet.",
                    [
                        "Run `labkit install` (builds once, about 15-25 minutes on 2 cores, then cached).",
                        "Or `labkit install --source prebuilt` to download the official release binaries instead (a minute).",
                        "Or set VSOLAB_CACHE to a cache directory that already holds them.",
                    ],
                )
            install_product(product, current_choice("auto", [product]))
        paths.update(product.paths())
    paths["vso-crds"] = PRODUCTS["vso"].dir / "crds"
    paths["vso-role"] = PRODUCTS["vso"].dir / "rbac" / "role.yaml"
    paths["bao"] = bao_binary()
    paths["postgres"] = postgres_bindir() / "postgres"
    paths["initdb"] = postgres_bindir() / "initdb"
    return paths


def install(
    products: list[str] | None = None, *, force: bool = False, parallel: bool = True, source: str = "auto"
) -> dict[str, Path]:
    """Install every missing Go binary from the chosen source (in parallel) and check the rest.

    ``source`` is ``auto``, ``build`` or ``prebuilt``; see :func:`~labkit.install._source.choose_source`.
    """
    every = {**PRODUCTS, **TOOLS}
    unknown = sorted(set(products or []) - set(every))
    if unknown:
        raise ParameterError(f"Checked the products to install ({', '.join(unknown)}): labkit knows {', '.join(every)}.",
                             ["Name some of those, e.g. `labkit install etcd kube`.", "Or name none to install them all.",
                              "`labkit install --help` lists them."])
    chosen = [every[n] for n in (products or list(every))]
    todo = [p for p in chosen if force or not p.built()]
    choice = current_choice(source, todo)
    if "build" not in choice.order:
        for p in [p for p in todo if p.name in TOOLS]:
            _say(f"{p.name} {p.version}: skipped, it is built from source only (`labkit install --source build`); "
                 "the lab runs VSO as a host process without it.")
            todo.remove(p)
    for p in chosen:
        if p.built() and p not in todo:
            _say(f"{p.name} {p.version}: cached in {p.dir} ({installed_source(p)})")
    if todo:
        _say(f"Install source: {' then '.join(choice.order)} ({choice.reason}).")
    errors: list[BaseException] = []

    def run(p: Product) -> None:
        try:
            install_product(p, SourceChoice(("build",), "built from source only") if p.name in TOOLS else choice,
                            force=force)
        except BaseException as exc:  # collected and re-raised below
            errors.append(exc)

    if parallel and len(todo) > 1:
        # Run the small ones next to the big one: kube dominates the wall time.
        threads = [threading.Thread(target=run, args=(p,)) for p in todo]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for p in todo:
            run(p)
    if errors:
        raise errors[0]
    return binaries() if not products else {k: v for p in chosen for k, v in p.paths().items()}
