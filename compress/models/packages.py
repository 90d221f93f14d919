"""Which package each model family needs, whether it is installed, and how to install it.

Why this module exists: the families' packages are optional (several pin old torch /
numpy versions and are installed without their pins by ``scripts/install_models.sh``),
so a missing one used to surface as a bare ``ModuleNotFoundError: No module named
'tsfm_public'`` from deep inside an adapter. `MissingPackageError` says which family
needs which distribution (its real name and the tested version) and the exact command
that installs it; `status()` answers "what can I load here?" without importing any of
the packages (`importlib.util.find_spec` only).

An adapter names the top-level modules it imports in ``requires`` (a class attribute);
`PACKAGES` maps each module to its distribution.

Example:
    >>> import compress
    >>> st = compress.models.status()                       # doctest: +SKIP
    >>> st["ttm"].installed, st["ttm"].missing              # doctest: +SKIP
    (False, ('granite-tsfm',))
"""
from __future__ import annotations

import dataclasses
import importlib.util
from typing import Dict, Iterable, Optional, Tuple

__all__ = ["Package", "PACKAGES", "FamilyStatus", "MissingPackageError", "status", "installed", "install_hint",
           "INSTALL_ALL"]

#: installs every family's package beside the torch that is already there (from a clone of the repository)
INSTALL_ALL = "bash scripts/install_models.sh"


@dataclasses.dataclass(frozen=True)
class Package:
    """A distribution a family imports.

    Attributes:
        module: the top-level import name (``tsfm_public``).
        distribution: the name pip knows (``granite-tsfm``).
        version: the version the tests run with (``scripts/install_models.sh`` pins it).
        no_deps: True when its own pins reject torch 2.13 / transformers 5 / numpy 2, so it
            must be installed with ``--no-deps`` (its real dependencies come from the script).
    """

    module: str
    distribution: str
    version: str
    no_deps: bool = False

    @property
    def pip(self) -> str:
        """The pip command that installs this one package."""
        flag = "--no-deps " if self.no_deps else ""
        return f"pip install {flag}'{self.distribution}=={self.version}'"


#: import name -> distribution (versions as pinned in scripts/install_models.sh)
PACKAGES: Dict[str, Package] = {p.module: p for p in (
    Package("transformers", "transformers", "5.24.0"),
    Package("chronos", "chronos-forecasting", "2.3.2"),
    Package("tsfm_public", "granite-tsfm", "0.3.11", no_deps=True),
    Package("momentfm", "momentfm", "0.1.4", no_deps=True),
    Package("uni2ts", "uni2ts", "2.0.0", no_deps=True),
    Package("gluonts", "gluonts", "0.17.0", no_deps=True),
    Package("einops", "einops", "0.8.2"),
)}


def _package(module: str) -> Package:
    top = module.split(".")[0]
    return PACKAGES.get(top) or Package(top, top, "")


def installed(module: str) -> bool:
    """Whether the top-level module `module` can be imported (found on the path; not imported)."""
    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def install_hint(modules: Iterable[str]) -> str:
    """The commands that install the distributions of `modules`, as one sentence."""
    pkgs = [_package(m) for m in modules]
    plain = [p for p in pkgs if not p.no_deps]
    bare = [p for p in pkgs if p.no_deps]
    parts = []
    if plain:
        spec = " ".join(f"'{p.distribution}=={p.version}'" if p.version else f"'{p.distribution}'" for p in plain)
        parts.append(f"`pip install {spec}`")
    if bare:
        spec = " ".join(f"'{p.distribution}=={p.version}'" for p in bare)
        parts.append(f"`pip install --no-deps {spec}` (its own pins reject torch 2.13; "
                     f"{INSTALL_ALL} also installs its real dependencies)")
    return (" and ".join(parts) + f", or every family's package at once with `{INSTALL_ALL}` "
            "(from a clone of the compress repository; it keeps your torch as it is)")


class MissingPackageError(ImportError):
    """A model family's package is not installed; the message names it and the install command.

    Attributes:
        family: the family that needs it.
        modules: the import names that are missing.
    """

    family: str = ""
    modules: Tuple[str, ...] = ()

    @classmethod
    def of(cls, family: str, modules: Iterable[str], cause: Optional[str] = None) -> "MissingPackageError":
        mods = list(dict.fromkeys(m.split(".")[0] for m in modules))
        pkgs = [_package(m) for m in mods]
        names = ", ".join(f"{p.distribution} {p.version}".strip() + (f" (import name {p.module})"
                          if p.module != p.distribution else "") for p in pkgs)
        msg = (f"model family {family!r} needs {names}, which {'is' if len(pkgs) == 1 else 'are'} not installed"
               + (f" ({cause})" if cause else "") + f". Install with {install_hint(mods)}. "
               "compress.models.status() lists which families are installed.")
        err = cls(msg, name=mods[0] if mods else None)  # plain (message) args: pickles across processes
        err.family, err.modules = family, tuple(mods)
        return err


@dataclasses.dataclass(frozen=True)
class FamilyStatus:
    """Whether one family can be loaded here.

    Attributes:
        family: the family name.
        installed: every module it imports is installed.
        requires: the distributions it needs ("" entries never: built-in families need none).
        missing: the distributions of `requires` that are not installed.
        install: the command that installs the missing ones ("" when nothing is missing).
    """

    family: str
    installed: bool
    requires: Tuple[str, ...]
    missing: Tuple[str, ...]
    install: str


def family_status(family: str, modules: Iterable[str]) -> FamilyStatus:
    mods = list(modules)
    missing = [m for m in mods if not installed(m)]
    return FamilyStatus(family, not missing, tuple(_package(m).distribution for m in mods),
                        tuple(_package(m).distribution for m in missing), install_hint(missing) if missing else "")


def status() -> Dict[str, FamilyStatus]:
    """`{family: FamilyStatus}` for every registered family (imports none of their packages).

    Example:
        >>> import compress
        >>> [f for f, s in compress.models.status().items() if not s.installed]   # doctest: +SKIP
        ['moirai']
    """
    from .base import _REGISTRY, _import_adapters

    _import_adapters()
    return {name: family_status(name, getattr(cls, "requires", ())) for name, cls in sorted(_REGISTRY.items())}


def check_installed(family: str, modules: Iterable[str]) -> None:
    """Raise `MissingPackageError` if any of `modules` is not installed."""
    missing = [m for m in modules if not installed(m)]
    if missing:
        raise MissingPackageError.of(family, missing)
