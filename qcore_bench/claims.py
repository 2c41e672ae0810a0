"""Claims: which process runs a cell, and locks for cache artifacts several processes build.

A claim is a small JSON file created exclusively (a hard link of a fully written temp
file, so exactly one process can create it and nobody ever sees it empty, also on NFS
and the parallel file systems clusters use; ``O_CREAT | O_EXCL`` where a file system has
no hard links). It names its holder (host, pid, an owner id that survives a SLURM
requeue) and carries a heartbeat refreshed by a background thread. A claim is *stale*,
and may be taken over, when its heartbeat is older than the timeout, when its holder is
a dead process on this host, or when it was left by an earlier incarnation of the same
SLURM task. Taking over is serialised by a short-lived guard file, so two processes that
both find a stale claim never both win it: the guard's holder removes the stale file if
it is still the one it judged, and then everybody races for a fresh exclusive create.

Heartbeats compare wall clocks of different hosts: keep cluster clocks in sync (NTP) and
the timeout (``QCORE_CLAIM_TIMEOUT``, seconds, default 600) well above any clock skew.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 600.0
TIMEOUT_ENV = "QCORE_CLAIM_TIMEOUT"
_GUARD_TIMEOUT = 30.0  # a takeover guard is held for a few file operations; older ones were left by a crash
_HELD: set[str] = set()  # tokens of the claims this process holds


class ClaimLost(RuntimeError):
    """This process's claim was taken over (its heartbeat looked stale to another process)."""


def claim_timeout(value: float | None = None) -> float:
    """Seconds without a heartbeat after which a claim is stale: ``value``, else $QCORE_CLAIM_TIMEOUT, else 600."""
    if value is None:
        raw = os.environ.get(TIMEOUT_ENV)
        try:
            value = float(raw) if raw else DEFAULT_TIMEOUT
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    if not math.isfinite(value) or value <= 0:  # nan compares false; inf overflows the heartbeat's wait
        raise ValueError(f"claim timeout must be a finite number of seconds > 0, got {value}")
    return float(value)


def owner_id() -> str:
    """Who runs this process: the SLURM task (stable across requeues) or host:pid."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm:{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm:{env['SLURM_JOB_ID']}"
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_claim(path: Path) -> dict[str, Any] | None:
    """The holder record of a claim file; None when absent, empty (being created) or unreadable."""
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) else None


def stale_reason(info: dict[str, Any], timeout: float, owner: str | None = None, now: float | None = None) -> str:
    """Why a claim may be taken over, or '' when its holder is alive."""
    now = time.time() if now is None else now
    age = now - float(info.get("heartbeat", 0))
    if age > timeout:
        return f"no heartbeat for {age:.0f}s (timeout {timeout:g}s)"
    if info.get("host") == socket.gethostname():
        pid = int(info.get("pid", -1))
        if not pid_alive(pid):
            return f"process {pid} on this host is gone"
        if pid == os.getpid() and info.get("token") not in _HELD:
            return "left by an earlier process with this pid"
    if owner is not None and owner.startswith("slurm:") and info.get("owner") == owner \
            and info.get("token") not in _HELD:
        return f"left by an earlier run of {owner} (requeued)"
    return ""


def describe(info: dict[str, Any]) -> str:
    """'host:pid (owner), heartbeat Ns ago' for messages."""
    age = time.time() - float(info.get("heartbeat", 0))
    owner = info.get("owner", "")
    who = f"{info.get('host', '?')}:{info.get('pid', '?')}"
    return f"{who}{f' ({owner})' if owner and not owner.endswith(who) else ''}, heartbeat {age:.0f}s ago"


def _takeover(info: dict[str, Any], timeout: float | None) -> str:
    """When a waiter takes a lock over if its holder stops: its heartbeat plus the timeout."""
    at = float(info.get("heartbeat", 0)) + claim_timeout(timeout)
    return (f"taken over at {time.strftime('%H:%M:%S', time.localtime(at))} (in {max(0.0, at - time.time()):.0f}s) "
            "if its heartbeat stops")


def _write_tmp(path: Path, info: dict[str, Any]) -> Path:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _write_atomic(path: Path, info: dict[str, Any]) -> None:
    os.replace(_write_tmp(path, info), path)


def _create_exclusive(path: Path, info: dict[str, Any]) -> None:
    """Create ``path`` holding ``info``, or raise FileExistsError: never visible empty or half written.

    A hard link of a fully written temp file is atomic and exclusive (also on NFS); where the
    file system has no hard links, ``O_CREAT | O_EXCL`` and then the write.
    """
    tmp = _write_tmp(path, info)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
            f.flush()
            os.fsync(f.fileno())
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale(path: Path, seen: dict[str, Any] | None) -> None:
    """Remove ``path`` if it still holds the stale record ``seen``; serialised by a guard file."""
    guard = path.parent / f"{path.name}.takeover"
    try:
        os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - guard.stat().st_mtime > _GUARD_TIMEOUT:
                guard.unlink()  # left by a process that died mid-takeover
        return
    try:
        current = read_claim(path)
        same = (current or {}).get("token") == (seen or {}).get("token")
        if same:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    finally:
        guard.unlink(missing_ok=True)


def _remove_temps(path: Path) -> None:
    """Temp files of ``path`` left by a holder killed mid-write (only its holder may call this)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


class Claim:
    """An exclusive, heartbeated right to one path; get one with ``Claim.acquire``."""

    def __init__(self, path: Path, info: dict[str, Any], timeout: float) -> None:
        self.path, self.info, self.timeout = path, info, timeout
        self.token: str = info["token"]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    @classmethod
    def acquire(cls, path: Path, timeout: float | None = None, owner: str | None = None,
                **extra: Any) -> "Claim | None":
        """Create the claim file exclusively (taking over a stale one); None when a live holder has it."""
        timeout = claim_timeout(timeout)
        owner = owner or owner_id()
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            now = time.time()
            info = {"host": socket.gethostname(), "pid": os.getpid(), "owner": owner, "token": uuid.uuid4().hex,
                    "started": now, "heartbeat": now, **extra}
            try:
                _create_exclusive(path, info)
            except FileExistsError:
                held = read_claim(path)
                if held is None:  # being written right now, vanished, or garbage
                    try:
                        age = time.time() - path.stat().st_mtime
                    except FileNotFoundError:
                        continue
                    if age <= min(timeout, _GUARD_TIMEOUT):
                        return None
                    reason = "unreadable claim file"
                else:
                    reason = stale_reason(held, timeout, owner)
                    if not reason:
                        return None
                log.warning("taking over %s: %s", path, reason)
                remove_stale(path, held)
                continue
            _remove_temps(path)
            _HELD.add(info["token"])
            return cls(path, info, timeout)
        return None

    def check(self) -> None:
        """Raise ClaimLost unless the claim file still names this holder."""
        current = read_claim(self.path)
        if self.lost or current is None or current.get("token") != self.token:
            self.lost = True
            holder = f" by {describe(current)}" if current else ""
            raise ClaimLost(f"{self.path} was taken over{holder}; this process stops working on it")

    def beat(self) -> None:
        """Refresh the heartbeat (raises ClaimLost when taken over)."""
        with self._lock:
            self.check()
            self.info["heartbeat"] = time.time()
            try:
                _write_atomic(self.path, self.info)
            except FileNotFoundError:  # a new holder cleaned up our temp file: the claim is lost
                self.check()
                raise

    def start_heartbeat(self, interval: float | None = None) -> None:
        """Beat from a daemon thread every ``interval`` seconds (default timeout / 5), also mid-epoch."""
        interval = self.timeout / 5 if interval is None else interval

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.beat()
                except ClaimLost:
                    return
                except OSError as exc:  # a hiccup of a network file system: try again next time
                    log.warning("heartbeat of %s failed: %s", self.path, exc)

        self._thread = threading.Thread(target=loop, name=f"heartbeat:{self.path}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the claim file if it is still this holder's."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            current = read_claim(self.path)
            if current is not None and current.get("token") == self.token:
                _remove_temps(self.path)
                self.path.unlink(missing_ok=True)
        _HELD.discard(self.token)


@contextlib.contextmanager
def file_lock(target: Path, timeout: float | None = None, poll: float = 0.2) -> Iterator[None]:
    """Hold ``<target>.lock`` while building ``target``; other processes wait here, then load it.

    Use as: if the artifact is missing, take the lock, check again (someone may have built
    it while this process waited), build, write with an atomic rename, release. A builder
    that dies leaves a stale lock that the next waiter takes over.
    """
    path = target.parent / f"{target.name}.lock"
    announced = None
    while (claim := Claim.acquire(path, timeout)) is None:
        held = read_claim(path)
        if held is not None and held.get("token") != announced:  # once per holder: what, who, until when
            log.warning("waiting for %s to build %s; %s", describe(held), target, _takeover(held, timeout))
            announced = held.get("token")
        time.sleep(poll)
    claim.start_heartbeat()
    try:
        yield
    finally:
        claim.release()
