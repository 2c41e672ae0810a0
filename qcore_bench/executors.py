"""Executors: how the pending cells of a suite get run.

    inline   one after another in this process (the default: tests, laptops, CPU users)
    local    a pool of slots on this machine, one subprocess per cell (``qcore-bench run-cell``),
             each GPU slot with its own CUDA_VISIBLE_DEVICES; a crashed cell never stops the others
    slurm    one SLURM job array through submitit; tasks are requeued on preemption or time-out

Every executor runs the same idempotent unit, ``run_one``: skip a done cell, claim it,
run or resume it from its checkpoint, record a failure with its traceback, release the
claim. So any mix of executors and processes may work on one results folder at once.
Executors are plugins (entry-point group ``qcore_bench.executors``): a subclass of
``Executor`` taking its options as keyword arguments, with ``run(cells, job) -> Summary``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import distributed
from .claims import ClaimLost, describe, owner_id
from .loggers import ConsoleProgress
from .runner import EpochCallback, Runtime, resolve_device, run_cell
from .store import Store
from .suite import Cell

EXIT_DONE, EXIT_FAILED, EXIT_ELSEWHERE, EXIT_INTERRUPTED = 0, 1, 75, 130


class ExecutorError(RuntimeError):
    """An executor that cannot start (bad option, missing extra, submission refused)."""


@dataclass(frozen=True)
class Job:
    """What every executor needs besides the cells."""

    store: Store
    device: str  # as the user wrote it: "auto" is resolved where each cell runs (a GPU node, a slot)
    cache_dir: Path
    eval_batch_size: int = 1024
    suite: Any = None  # the Suite, for suite-level executor settings (its ``slurm:`` section)
    cpu_threads: int = 1  # torch threads of each CPU cell (pinned by run_cell, recorded in provenance)

    @property
    def wandb(self) -> Any:
        return getattr(self.suite, "wandb", None)

    def runtime(self) -> Runtime:
        return Runtime(resolve_device(self.device), self.cache_dir, self.eval_batch_size, wandb=self.wandb,
                       cpu_threads=self.cpu_threads)

    def payload(self, cell: Cell) -> str:
        """What a cell process needs besides its command line: the cell and the suite's runtime settings."""
        wandb = self.wandb.model_dump(mode="json") if self.wandb is not None else None
        return json.dumps({"cell": cell.model_dump(mode="json"), "wandb": wandb, "cpu_threads": self.cpu_threads})


def runtime_from_payload(payload: dict[str, Any], device: str, cache_dir: Path, eval_batch_size: int) -> Runtime:
    wandb = None
    if payload.get("wandb") is not None:
        from .wandb_log import WandbCfg

        wandb = WandbCfg.model_validate(payload["wandb"])
    return Runtime(resolve_device(device), cache_dir, eval_batch_size, wandb=wandb,
                   cpu_threads=int(payload.get("cpu_threads") or 1))


@dataclass
class Summary:
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # cell id -> reason
    elsewhere: dict[str, str] = field(default_factory=dict)  # cell id -> who runs it
    submitted: list[str] = field(default_factory=list)  # handed to a scheduler, not waited for
    interrupted: bool = False
    note: str = ""


@dataclass
class Outcome:
    state: str  # done | failed | elsewhere
    reason: str = ""
    result: dict[str, Any] | None = None
    ran: bool = True  # False: found done (finished earlier or by another process)


def _claim(cell: Cell, store: Store, owner: str | None) -> Outcome | None:
    """Claim the cell for this process: None, or why it is not to be run here."""
    if store.is_done(cell.id):
        return Outcome("done", result=store.result(cell.id), ran=False)
    if store.claim(cell.id, owner) is None:
        holder = store.holder(cell.id)
        return Outcome("elsewhere", describe(holder) if holder else "another process")
    if store.is_done(cell.id):  # finished by another process between the check and the claim
        store.release(cell.id)
        return Outcome("done", result=store.result(cell.id), ran=False)
    return None


def run_one(cell: Cell, store: Store, rt: Runtime, on_epoch: EpochCallback | None = None,
            owner: str | None = None) -> Outcome:
    """The idempotent unit of work: done cells are skipped, claimed ones left to their holder.

    Under torchrun, rank 0 alone claims and records the cell; the other ranks follow its
    decision. A rank > 0 that fails prints its traceback and exits, and torchrun stops the
    others (rank 0 then records the cell as interrupted, resumable).
    """
    main = distributed.is_main()
    early = distributed.broadcast_object(_claim(cell, store, owner) if main else None)
    if early is not None:
        return early
    try:
        return Outcome("done", result=run_cell(cell, store, rt, on_epoch=on_epoch))
    except ClaimLost as exc:
        return Outcome("elsewhere", str(exc))
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM, submitit's exit after a requeue
        if main:
            store.interrupt(cell.id)  # resumable from its last checkpoint
        raise
    except Exception as exc:  # one broken cell must not lose the others
        reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        if main:
            store.fail(cell.id, reason, traceback.format_exc())
        else:
            traceback.print_exc()
        return Outcome("failed", reason)
    finally:
        store.release(cell.id)


class Executor:
    """Base class of executors; subclasses take their options as explicit keyword arguments."""

    def run(self, cells: list[Cell], job: Job) -> Summary:
        raise NotImplementedError


def _total_epochs(cells: list[Cell]) -> int:
    return sum(c.train.epochs for c in cells)


class InlineExecutor(Executor):
    """One cell after another in this process."""

    def run(self, cells: list[Cell], job: Job) -> Summary:
        summary, rt = Summary(), job.runtime()
        with ConsoleProgress(_total_epochs(cells), len(cells)) as progress:
            for i, cell in enumerate(cells, 1):
                progress.start_cell(i, cell)
                start = time.perf_counter()
                try:
                    out = run_one(cell, job.store, rt, on_epoch=progress.epoch)
                except KeyboardInterrupt:
                    summary.interrupted = True
                    break
                _record(summary, progress, i, cell, out, time.perf_counter() - start)
        return summary


def _record(summary: Summary, progress: ConsoleProgress, i: int, cell: Cell, out: Outcome, seconds: float) -> None:
    if out.state == "done":
        summary.done.append(cell.id)
        if out.ran:
            progress.done_cell(i, cell, (out.result or {}).get("final_acc", float("nan")), seconds)
        else:
            progress.console.print(f"skip {i}/{progress.n_cells} {cell.id}: finished by another process",
                                   highlight=False)
    elif out.state == "failed":
        summary.failed[cell.id] = out.reason
        progress.failed_cell(i, cell, out.reason)
    else:
        summary.elsewhere[cell.id] = out.reason


# ---------------------------------------------------------------------------- local pool


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
        with ConsoleProgress(_total_epochs(cells), len(cells)) as progress:
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
                        running[slot] = self._launch(cell, started, job, envs[slot])
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
        return _Child(cell, index, proc, log, time.perf_counter(), _history_length(job.store, cell.id))

    @staticmethod
    def _report_epochs(child: _Child, store: Store, progress: ConsoleProgress) -> None:
        lines = _history_lines(store, child.cell.id)
        for line in lines[child.epochs_seen:]:
            try:
                h = json.loads(line)
            except json.JSONDecodeError:  # a line being written
                break
            progress.epoch(h.get("epoch", 0), child.cell.train.epochs, h.get("test_acc", float("nan")))
            child.epochs_seen += 1

    @staticmethod
    def _finish(child: _Child, store: Store, summary: Summary, progress: ConsoleProgress) -> None:
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
            else:  # it could not record its own failure: record it here
                reason = exit_reason(rc)
                store.break_claim(cid, child.proc.pid)
                log = store.dir(cid) / "log.txt"
                tail = log.read_text(errors="replace").splitlines()[-40:] if log.is_file() else []
                store.fail(cid, reason, f"{reason}\n\nlast lines of {log}:\n" + "\n".join(tail) + "\n")
            out = Outcome("failed", reason)
        _record(summary, progress, child.index, child.cell, out, seconds)

    def _stop(self, children: list[_Child], store: Store, summary: Summary, progress: ConsoleProgress) -> None:
        """Ctrl-C: ask every child to stop (it checkpoints and releases its claim), then make sure."""
        progress.console.print(f"interrupted: stopping {len(children)} running cells", highlight=False)
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
            self._finish(child, store, summary, progress)


def _history_lines(store: Store, cell_id: str) -> list[str]:
    path = store.dir(cell_id) / "history.jsonl"
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def _history_length(store: Store, cell_id: str) -> int:
    return len(_history_lines(store, cell_id))


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the pool process dies, even by SIGKILL (no orphaned GPU jobs)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_cell_process(cell: Cell, store: Store, rt: Runtime, die_with_parent: bool = False) -> int:
    """The body of ``qcore-bench run-cell``: run one cell, print epochs, return the exit status."""
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)  # a stopped pool or a scheduler
    if die_with_parent:
        _die_with_parent()

    def on_epoch(epoch: int, total: int, acc: float) -> None:
        print(f"{cell.id} epoch {epoch + 1}/{total} test acc {acc:.2f}", file=sys.stderr, flush=True)

    def say(message: str) -> None:  # once, not once per torchrun rank
        if distributed.is_main():
            print(message, file=sys.stderr)

    try:
        out = run_one(cell, store, rt, on_epoch=on_epoch)
    except KeyboardInterrupt:
        say(f"{cell.id} interrupted; it resumes from its last checkpoint")
        return EXIT_INTERRUPTED
    finally:  # called in-process too (tests, slurm tasks): leave the caller's handler as it was
        signal.signal(signal.SIGTERM, previous)
    if out.state == "done":
        acc = (out.result or {}).get("final_acc", float("nan"))
        say(f"{cell.id} {'done' if out.ran else 'was already done'}: final acc {acc:.2f}")
        return EXIT_DONE
    if out.state == "elsewhere":
        say(f"{cell.id} is being run by {out.reason}; not started")
        return EXIT_ELSEWHERE
    say(f"{cell.id} failed: {out.reason} (see {store.dir(cell.id) / 'error.txt'})")
    return EXIT_FAILED


# ---------------------------------------------------------------------------- slurm


class SlurmTask:
    """One task of the job array: ``run_one`` on a node; requeued by submitit on preemption or time-out."""

    def __call__(self, payload: str, results: str, cache_dir: str, device: str, eval_batch_size: int,
                 claim_timeout: float) -> dict[str, str]:
        data = json.loads(payload)
        cell = Cell.model_validate(data["cell"])
        store = Store(results, claim_timeout)
        rt = runtime_from_payload(data, device, Path(cache_dir), eval_batch_size)
        out = run_one(cell, store, rt, owner=owner_id())
        return {"cell": cell.id, "state": out.state, "reason": out.reason}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Resubmit the same task: the cell resumes from its last epoch checkpoint in the results folder."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def _parse_sbatch(items: Any) -> dict[str, Any]:
    if isinstance(items, dict):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--sbatch {item}: expected KEY=VALUE, e.g. account=myproject or qos=high")
        out[key.strip().lstrip("-")] = value.strip()
    return out


class SlurmExecutor(Executor):
    """The pending cells as one SLURM job array (submitit); options override the suite's ``slurm:`` section.

    ``cluster="local"`` or ``"debug"`` runs the same array with submitit's local or in-process
    executor: a dry run of the cluster path on a laptop.
    """

    def __init__(self, partition: str | None = None, time: int | None = None, gpus_per_task: int | None = None,
                 cpus_per_task: int | None = None, mem: float | None = None, array_parallelism: int | None = None,
                 sbatch: Any = None, cluster: str = "slurm", wait: bool = False) -> None:
        if cluster not in ("slurm", "local", "debug"):
            raise ValueError(f"cluster must be slurm, local or debug, got {cluster!r}")
        for name, value in (("time", time), ("array_parallelism", array_parallelism), ("mem", mem)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name, value in (("gpus_per_task", gpus_per_task), ("cpus_per_task", cpus_per_task)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.options = {"partition": partition, "time": time, "gpus_per_task": gpus_per_task,
                        "cpus_per_task": cpus_per_task, "mem": mem, "array_parallelism": array_parallelism}
        self.sbatch = _parse_sbatch(sbatch)
        self.cluster, self.wait = cluster, wait or cluster == "debug"

    def settings(self, suite: Any) -> dict[str, Any]:
        """The suite's ``slurm:`` values, overridden by the options given here."""
        cfg = getattr(suite, "slurm", None)
        base = cfg.model_dump() if cfg is not None else {}
        out = {**base, **{k: v for k, v in self.options.items() if v is not None}}
        out["sbatch"] = {**base.get("sbatch", {}), **self.sbatch}
        return out

    def build(self, job: Job, n_tasks: int) -> Any:
        """A configured submitit executor (importing submitit only now)."""
        try:
            import submitit
        except ImportError:
            raise ExecutorError("the slurm executor needs submitit: pip install 'qcore-bench[slurm]'") from None
        s = self.settings(job.suite)
        folder = job.store.root / "slurm" / "%j"
        ex = submitit.AutoExecutor(folder=folder, cluster=self.cluster, slurm_max_num_timeout=s.get("max_timeouts", 3))
        params: dict[str, Any] = {
            "name": f"qcore-{getattr(job.suite, 'name', 'bench')}", "timeout_min": s.get("time"),
            "gpus_per_node": s.get("gpus_per_task") or None, "cpus_per_task": s.get("cpus_per_task"),
            "mem_gb": s.get("mem"), "slurm_partition": s.get("partition"),
            "slurm_array_parallelism": min(n_tasks, s.get("array_parallelism") or n_tasks),
            "slurm_additional_parameters": s["sbatch"] or None, "slurm_setup": s.get("setup") or None,
        }
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return ex

    def run(self, cells: list[Cell], job: Job) -> Summary:
        store, summary = job.store, Summary()
        pending = []
        for cell in cells:
            holder = store.holder(cell.id)
            if store.is_done(cell.id):
                summary.done.append(cell.id)
            elif holder is not None:
                summary.elsewhere[cell.id] = describe(holder)
            else:
                pending.append(cell)
        if not pending:
            return summary
        ex = self.build(job, len(pending))
        args = [(job.payload(c), str(store.root.resolve()), str(Path(job.cache_dir).resolve()), job.device,
                 job.eval_batch_size, store.claim_timeout) for c in pending]
        try:
            jobs = ex.map_array(SlurmTask(), *zip(*args))
        except Exception as exc:  # sbatch refused the array: bad partition, account, time limit ...
            raise ExecutorError(f"submitting the job array failed: {exc}") from None
        (store.root / "slurm").mkdir(parents=True, exist_ok=True)
        with open(store.root / "slurm" / "submitted.jsonl", "a") as f:
            for j, cell in zip(jobs, pending):
                f.write(json.dumps({"job": str(j.job_id), "cell": cell.id, "time": time.time()}) + "\n")
        if not self.wait:
            summary.submitted = [c.id for c in pending]
            array = str(jobs[0].job_id).split("_")[0]
            summary.note = (f"submitted job array {array} with {len(pending)} tasks; logs in "
                            f"{store.root / 'slurm'}; follow with `squeue -j {array}` and `qcore-bench plan`")
            return summary
        for j, cell in zip(jobs, pending):
            try:
                out = j.result()
            except KeyboardInterrupt:
                summary.interrupted = True
                break
            except Exception as exc:  # the task itself died (node failure, out of memory, cancelled)
                reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                if not store.is_done(cell.id):
                    store.fail(cell.id, reason, str(exc))
                summary.failed[cell.id] = reason
                continue
            if out["state"] == "done":
                summary.done.append(cell.id)
            elif out["state"] == "failed":
                summary.failed[cell.id] = out["reason"]
            else:
                summary.elsewhere[cell.id] = out["reason"]
            print(f"{out['state']} {cell.id} (task {j.job_id}){': ' + out['reason'] if out['reason'] else ''}",
                  file=sys.stderr, flush=True)
        return summary
