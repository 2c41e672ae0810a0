"""The local executor: a pool of slots on this machine, one ``qcore-bench run-cell`` process per cell."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import IO

from ..claims import describe
from ..loggers import PHASE_LINE, ConsoleProgress
from ..store import Store
from ..cells import Cell
from .base import (EXIT_DONE, EXIT_ELSEWHERE, EXIT_FAILED, EXIT_INTERRUPTED, Executor, ExecutorError, Job, Outcome,
                   Summary, record, record_failure, total_epochs)


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def exit_reason(rc: int) -> str:
    """Why a cell's process ended, for a cell that could not say so itself."""
    if rc < 0:
        sig = _signal_name(rc)
        hint = " (the out-of-memory killer, or kill -9?)" if sig == "SIGKILL" else ""
        return f"process killed by {sig}{hint}"
    return f"process exited with code {rc}"


@dataclass
class _Child:
    cell: Cell
    index: int
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    started: float
    epochs_seen: int
    log_seen: int  # bytes of log.txt already read for teacher and proxy lines
    wall_start: float = field(default_factory=time.time)


def shared_artifacts(cell: Cell) -> str:
    """What decides the teacher and the proxies a cell needs (data, noise, seed, model, teacher recipe)."""
    ident = cell.identity()
    return json.dumps({k: ident.get(k) for k in ("dataset", "noise", "seed", "model", "model_params", "teacher")},
                      sort_keys=True)


def next_cell(queue: list[Cell], running: list[Cell]) -> int:
    """The index of the queued cell to start next: the first one that shares no teacher or proxy with
    a running cell, else the first. Two slots that need the same untrained teacher would otherwise
    run one training while the other waits on its lock."""
    busy = {shared_artifacts(c) for c in running}
    return next((i for i, c in enumerate(queue) if shared_artifacts(c) not in busy), 0)


class LocalExecutor(Executor):
    """A pool of slots on this machine; each cell runs in its own ``qcore-bench run-cell`` process.

    ``gpus="0,1" per_gpu=2``: four slots, two per GPU, each child seeing only its GPU.
    ``gpus=""`` (or no GPU present): ``slots`` CPU-only slots (default 1), GPUs hidden.
    """

    def __init__(self, gpus: str | None = None, per_gpu: int = 1, slots: int | None = None,
                 grace_seconds: float = 30.0) -> None:
        if per_gpu < 1:
            raise ValueError(f"--per-gpu must be >= 1, got {per_gpu}")
        if slots is not None and slots < 1:
            raise ValueError(f"--slots must be >= 1, got {slots}")
        self.gpus: list[str] | None = None
        if gpus is not None:
            self.gpus = [g.strip() for g in gpus.split(",") if g.strip()]
            bad = [g for g in self.gpus if not g.isdigit()]
            if bad:
                raise ValueError(f"--gpus expects GPU ids such as 0,1,2 (or '' for CPU slots), got {gpus!r}")
            if self.gpus and slots is not None:
                raise ValueError("--slots counts CPU-only slots; with --gpus give --per-gpu instead")
        self.per_gpu, self.slots, self.grace_seconds = per_gpu, slots, grace_seconds

    def slot_envs(self, device: str, cpu_threads: int = 1) -> list[dict[str, str]]:
        """One environment per slot: which GPU it sees and how many CPU threads it may use
        (a CPU slot: the cells' pinned ``cpu_threads``; a GPU slot: its share of the cores)."""
        gpus = self.gpus
        if gpus is None:
            import torch

            gpus = [str(i) for i in range(torch.cuda.device_count())] if device != "cpu" else []
        elif gpus and device == "cpu":
            raise ValueError("--device cpu with --gpus: use --gpus '' --slots N for CPU-only slots")
        envs = ([{"CUDA_VISIBLE_DEVICES": g, "QCORE_SLOT_DEVICE": "cuda"} for g in gpus for _ in range(self.per_gpu)]
                or [{"CUDA_VISIBLE_DEVICES": "", "QCORE_SLOT_DEVICE": "cpu"} for _ in range(self.slots or 1)])
        share = str(max(1, (os.cpu_count() or 1) // len(envs)))
        for env in envs:
            threads = str(cpu_threads) if env["QCORE_SLOT_DEVICE"] == "cpu" else share
            env.setdefault("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", threads))
        return envs

    def run(self, cells: list[Cell], job: Job) -> Summary:
        try:
            envs = self.slot_envs(job.device, job.cpu_threads)
        except ValueError as exc:
            raise ExecutorError(str(exc)) from None
        store, summary = job.store, Summary()
        queue, running, free = list(cells), {}, list(range(len(envs)))
        started = 0
        with ConsoleProgress(total_epochs(cells), len(cells)) as progress:
            try:
                while queue or running:
                    while queue and free:
                        cell = queue.pop(next_cell(queue, [c.cell for c in running.values()]))
                        if store.is_done(cell.id):
                            summary.done.append(cell.id)
                            continue
                        holder = store.holder(cell.id)
                        if holder is not None:
                            summary.elsewhere[cell.id] = describe(holder)
                            continue
                        slot = free.pop(0)
                        started += 1
                        try:
                            running[slot] = self._launch(cell, started, job, envs[slot])
                        except OSError as exc:  # its folder cannot be written: that cell fails, the pool goes on
                            free.append(slot)
                            reason = (f"cell folder {store.dir(cell.id)} cannot be written "
                                      f"({type(exc).__name__}: {exc.strerror or exc})")
                            record_failure(store, cell.id, reason, reason + "\n")
                            record(summary, progress, started, cell, Outcome("failed", reason), 0.0)
                            continue
                        progress.start_cell(started, cell)
                    time.sleep(0.2)
                    for slot, child in list(running.items()):
                        self._report_epochs(child, store, progress)
                        if child.proc.poll() is not None:
                            del running[slot]
                            free.append(slot)
                            self._finish(child, store, summary, progress)
            except KeyboardInterrupt:
                summary.interrupted = True
                self._stop(list(running.values()), store, summary, progress)
        return summary

    def _launch(self, cell: Cell, index: int, job: Job, slot_env: dict[str, str]) -> _Child:
        d = job.store.dir(cell.id)
        d.mkdir(parents=True, exist_ok=True)
        device = "cpu" if slot_env["QCORE_SLOT_DEVICE"] == "cpu" else "cuda"
        cmd = [sys.executable, "-m", "qcore_bench", "run-cell", cell.id, "--results", str(job.store.root),
               "--config", "-", "--device", device, "--eval-batch-size", str(job.eval_batch_size),
               "--claim-timeout", str(job.store.claim_timeout), "--die-with-parent"]
        env = {**os.environ, **slot_env, "QCORE_CACHE": str(job.cache_dir), "PYTHONUNBUFFERED": "1"}
        log = open(d / "log.txt", "ab")
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} slot CUDA_VISIBLE_DEVICES="
                  f"{slot_env['CUDA_VISIBLE_DEVICES']!r}\n".encode())
        log.flush()
        # a session of its own: Ctrl-C reaches only this process, which then stops the children cleanly
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        assert proc.stdin is not None
        proc.stdin.write(job.payload(cell).encode())
        proc.stdin.close()
        return _Child(cell, index, proc, log, time.perf_counter(), _history_length(job.store, cell.id), log.tell())

    @staticmethod
    def _report_epochs(child: _Child, store: Store, progress: ConsoleProgress) -> None:
        lines = _history_lines(store, child.cell.id)
        for line in lines[child.epochs_seen:]:
            try:
                h = json.loads(line)
            except json.JSONDecodeError:  # a line being written
                break
            progress.epoch(h.get("epoch", 0), child.cell.train.epochs, h.get("test_acc", h.get("test_map", float("nan"))))
            child.epochs_seen += 1
        with open(store.dir(child.cell.id) / "log.txt", "rb") as f:  # the cell's teacher and proxy lines
            f.seek(child.log_seen)
            new = f.read()
        done = new.rfind(b"\n") + 1  # whole lines only: the rest is being written
        child.log_seen += done
        for line in new[:done].decode(errors="replace").splitlines():
            match = PHASE_LINE.match(line)
            if match:
                progress.line("train", "cyan", f"{child.index}/{progress.n_cells} {match['id']} {match['text']}")

    @staticmethod
    def _finish(child: _Child, store: Store, summary: Summary, progress: ConsoleProgress,
                stopping: bool = False) -> None:
        """Record how a cell's process ended. ``stopping``: the pool sent it SIGINT (Ctrl-C)."""
        rc, cid = child.proc.returncode, child.cell.id
        child.log.close()
        seconds = time.perf_counter() - child.started
        if rc == EXIT_DONE and store.is_done(cid):
            out = Outcome("done", result=store.result(cid))
        elif rc == EXIT_ELSEWHERE:
            holder = store.holder(cid)
            out = Outcome("elsewhere", describe(holder) if holder else "another process")
        elif rc == EXIT_INTERRUPTED:
            summary.interrupted = True
            return
        else:
            st = store.read_status(cid)
            if rc == EXIT_FAILED and st.get("state") == "failed" and st.get("failed", 0) >= child.wall_start:
                reason = st.get("reason", "failed")
            elif stopping:  # our SIGINT came before it could handle it (still importing on a busy core)
                store.break_claim(cid, child.proc.pid)
                if st.get("state") == "running":  # it had begun: resumable from its last checkpoint
                    store.interrupt(cid)
                summary.interrupted = True
                return
            else:  # it could not record its own failure: record it here
                reason = exit_reason(rc)
                store.break_claim(cid, child.proc.pid)
                log = store.dir(cid) / "log.txt"
                tail = log.read_text(errors="replace").splitlines()[-40:] if log.is_file() else []
                record_failure(store, cid, reason, f"{reason}\n\nlast lines of {log}:\n" + "\n".join(tail) + "\n")
            out = Outcome("failed", reason)
        record(summary, progress, child.index, child.cell, out, seconds)

    def _stop(self, children: list[_Child], store: Store, summary: Summary, progress: ConsoleProgress) -> None:
        """Ctrl-C: ask every child to stop (it checkpoints and releases its claim), then make sure."""
        progress.note(f"interrupted: stopping {len(children)} running cells")
        for child in children:
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + self.grace_seconds
        for child in children:
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # stuck, or a second Ctrl-C: kill it;
                child.proc.kill()  # it loses the epoch in flight, nothing more
                child.proc.wait()
                store.break_claim(child.cell.id, child.proc.pid)
                store.interrupt(child.cell.id)
                child.log.close()
                deadline = 0.0
                continue
            self._finish(child, store, summary, progress, stopping=True)


def _history_lines(store: Store, cell_id: str) -> list[str]:
    path = store.dir(cell_id) / "history.jsonl"
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def _history_length(store: Store, cell_id: str) -> int:
    return len(_history_lines(store, cell_id))
