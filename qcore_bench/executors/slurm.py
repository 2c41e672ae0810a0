"""The slurm executor: the pending cells as one SLURM job array through submitit."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from ..claims import describe, owner_id
from ..store import Store
from ..cells import Cell
from .base import Executor, ExecutorError, Job, Summary, run_one, runtime_from_payload



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
