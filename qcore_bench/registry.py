"""Named plugins (selectors, datasets, models) discovered through entry points.

One mechanism for built-ins and third-party packages alike: every entry is a lazy
``module:Attr`` reference read once from package metadata and imported only when a
suite names it. A plugin that fails to import is reported by name and skipped; it
never breaks the other entries.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import re
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

log = logging.getLogger(__name__)

GROUPS = ("selectors", "datasets", "models", "executors")


class UnknownNameError(KeyError):
    """A name that no registry entry has; the message carries a suggestion."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "module:Attr"
    package: str  # distribution that registered it

    def load(self) -> Any:
        return EntryPoint(self.name, self.target, "").load()


def natural_key(text: str) -> list[Any]:
    """Sort key that orders 'resnet8' before 'resnet18' (as timm's list_models does)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def did_you_mean(name: str, choices: list[str]) -> str:
    """'; did you mean 'acs'?' for a near miss (case does not count: 'ACS'), else every known name once."""
    names = sorted(set(choices), key=natural_key)
    by_lower = {c.lower(): c for c in names}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean '{by_lower[close[0]]}'?" if close else f" (known: {', '.join(names)})"


class Registry:
    """The entries of one group, e.g. ``qcore_bench.selectors``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.group = f"qcore_bench.{kind}"
        self._entries: dict[str, Entry] | None = None
        self._loaded: dict[str, Any] = {}
        self._broken: dict[str, str] = {}

    @property
    def entries(self) -> dict[str, Entry]:
        if self._entries is None:
            found: dict[str, Entry] = {}
            for ep in entry_points(group=self.group):
                package = ep.dist.name if ep.dist is not None else "?"
                if ep.name in found:
                    log.warning("%s '%s' registered twice (%s and %s); keeping the first",
                                self.kind[:-1], ep.name, found[ep.name].package, package)
                    continue
                found[ep.name] = Entry(ep.name, ep.value, package)
            self._entries = found
        return self._entries

    def names(self, pattern: str = "*") -> list[str]:
        """Entry names matching a shell-style wildcard, in natural order."""
        return sorted(fnmatch.filter(self.entries, pattern), key=natural_key)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def get(self, name: str) -> Any:
        """Import the entry on first use; raise UnknownNameError with a suggestion."""
        if name in self._loaded:
            return self._loaded[name]
        if name not in self.entries:
            raise UnknownNameError(f"unknown {self.kind[:-1]} '{name}'{did_you_mean(name, list(self.entries))}")
        entry = self.entries[name]
        try:
            obj = entry.load()
        except Exception as exc:  # a broken plugin must not take the others down
            self._broken[name] = f"{type(exc).__name__}: {exc}"
            log.error("%s '%s' from %s failed to load: %s", self.kind[:-1], name, entry.package, exc)
            raise UnknownNameError(
                f"{self.kind[:-1]} '{name}' (from package {entry.package}) failed to import: {exc}") from exc
        self._loaded[name] = obj
        return obj


_REGISTRIES: dict[str, Registry] = {}


def registry(kind: str) -> Registry:
    """The process-wide registry of one kind, read from entry points once."""
    if kind not in GROUPS:
        raise UnknownNameError(f"unknown registry '{kind}'{did_you_mean(kind, list(GROUPS))}")
    if kind not in _REGISTRIES:
        _REGISTRIES[kind] = Registry(kind)
    return _REGISTRIES[kind]
