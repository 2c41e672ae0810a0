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

from .base import (EXIT_DONE, EXIT_ELSEWHERE, EXIT_FAILED, EXIT_INTERRUPTED, Executor, ExecutorError, Job, Outcome,
                   Summary, run_one, runtime_from_payload)
from .cell_process import run_cell_process
from .inline import InlineExecutor
from .local import LocalExecutor, exit_reason, next_cell
from .slurm import SlurmExecutor, SlurmTask

__all__ = ["EXIT_DONE", "EXIT_ELSEWHERE", "EXIT_FAILED", "EXIT_INTERRUPTED", "Executor", "ExecutorError", "Job",
           "Outcome", "Summary", "run_one", "runtime_from_payload", "run_cell_process", "InlineExecutor",
           "LocalExecutor", "exit_reason", "next_cell", "SlurmExecutor", "SlurmTask"]
