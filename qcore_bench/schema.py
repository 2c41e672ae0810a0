"""The suite schema: what a suite file may hold, as strict pydantic models.

Every model refuses unknown keys, so a typo is an error that names the key; the loading
and the name checks live in ``suite``, the grid's cells in ``cells``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from .recipes import MAX_EPOCHS, NUMBER, WHOLE, Recipe, Strict
from .wandb_log import WandbCfg


class SuiteError(ValueError):
    """A suite that cannot run; str() is the one-line message for the user."""


class ModelSpec(Strict):
    """A registered model and its parameters, e.g. ``{name: mobilenetv2, params: {width: 0.5}}``."""

    name: str
    params: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


class KD(Strict):
    """Distillation: soft cross-entropy at a temperature, plus a hard-label term.

    ``teacher`` names another full-precision model as the distillation teacher (e.g.
    ResNet-101 on ImageNet); by default it is the DS reference (the student's architecture).
    ``weights``: a path to its published weights (where they lie: not part of the cell id).
    """

    enabled: bool = False
    temperature: Annotated[float, NUMBER, Field(gt=0)] = 1.0
    hard_weight: Annotated[float, NUMBER, Field(ge=0)] = 0.0
    teacher: ModelSpec | None = None
    weights: str | None = None


class Train(Recipe):
    """The QAT recipe every method shares. ``compile``: torch.compile the student's training step."""

    kd: KD = KD()
    compile: bool = False


class Teacher(Recipe):
    """The full-precision model of the student's architecture: the DS reference and the student's start.

    Trained on the full (noisy) training set with this recipe, or, with ``pretrained``,
    loaded from published weights (torchvision's for ``resnet18_imagenet``) found in the
    torch hub cache or at ``weights`` (a path: not part of the cell id).
    """

    epochs: Annotated[int, WHOLE, Field(gt=0, le=MAX_EPOCHS)] = 30
    lr: Annotated[float, NUMBER, Field(gt=0)] = 0.1
    pretrained: bool = False
    weights: str | None = None


class Quant(Strict):
    """Which layers are quantized; ``policy`` as in ``qcore_bench.quant.quantize_model``."""

    first_last: Literal["fp", "8bit"] = "fp"
    quantize_downsample: bool = True
    policy: Literal["all", "acs_resnet", "weight_only_blocks"] = "all"
    act_grad_scale: Literal["per_sample", "per_batch"] = "per_sample"  # see quant.quantize_model


class SelectionCfg(Strict):
    balanced: bool = True


class Budget(Strict):
    """How methods are made comparable; see qcore_bench.budget for the cost model."""

    mode: Literal["per_epoch_fraction", "total_compute"] = "per_epoch_fraction"
    include_teacher: bool = False


def spec_label(name: str, params: dict[str, Any]) -> str:
    """``name``, or ``name(k=v,...)`` with its parameters: variants stay apart in tables and labels."""
    return f"{name}({','.join(f'{k}={v}' for k, v in sorted(params.items()))})" if params else name


class DatasetSpec(Strict):
    """A registered data set: ``root`` (where it lies: absolute, or relative to the data root) and
    ``display`` (its name in tables and plots) are not part of the cell id."""

    name: str
    root: str | None = None
    params: dict[str, Any] = {}
    display: str | None = None

    @property
    def label(self) -> str:
        return spec_label(self.name, self.params)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


class NoiseSpec(Strict):
    kind: Literal["none", "symmetric"] = "symmetric"
    rate: Annotated[float, NUMBER, Field(ge=0, lt=1)] = 0.0

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return {"kind": "symmetric" if v > 0 else "none", "rate": v}
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "NoiseSpec":
        if self.kind == "none" and self.rate != 0:
            raise ValueError("kind 'none' needs rate 0")
        if self.kind != "none" and self.rate == 0:
            return NoiseSpec(kind="none", rate=0.0)
        return self

    @property
    def label(self) -> str:
        return "clean" if self.kind == "none" else f"{self.kind}-{self.rate:g}"


class MethodSpec(Strict):
    name: str
    selector: str = ""
    params: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"name": v, "selector": v}
        if isinstance(v, dict) and "name" in v and not v.get("selector"):
            return {**v, "selector": v["name"]}
        return v


def listify(v: Any) -> Any:
    return v if isinstance(v, list) else [v]


def _checked_bits(text: str) -> str:
    parse_bits(text)
    return text


class Grid(Strict):
    dataset: Annotated[list[DatasetSpec], Field(min_length=1)]
    model: Annotated[list[ModelSpec], Field(min_length=1)]
    bits: Annotated[list[Annotated[str, AfterValidator(_checked_bits)]], Field(min_length=1)]  # errors name bits[i]
    fraction: Annotated[list[Annotated[float, NUMBER, Field(gt=0, le=1)]], Field(min_length=1)]
    noise: Annotated[list[NoiseSpec], Field(min_length=1)] = [NoiseSpec(kind="none")]
    method: Annotated[list[MethodSpec], Field(min_length=1)]
    seed: Annotated[list[Annotated[int, WHOLE]], Field(min_length=1)] = [0]

    @field_validator("*", mode="before")
    @classmethod
    def _wrap(cls, v: Any) -> Any:
        return listify(v)


class SlurmCfg(Strict):
    """Cluster settings for ``run --executor slurm`` (runtime only: not part of any cell id)."""

    partition: str | None = None
    time: Annotated[int, Field(gt=0)] = 240  # minutes per task; a longer cell is requeued and resumes
    gpus_per_task: Annotated[int, Field(ge=0)] = 1
    cpus_per_task: Annotated[int, Field(gt=0)] | None = None
    mem: Annotated[float, Field(gt=0)] | None = None  # GB per task
    array_parallelism: Annotated[int, Field(gt=0)] = 64  # tasks running at once
    max_timeouts: Annotated[int, Field(ge=0)] = 10  # requeues after time-outs (preemptions are unlimited)
    sbatch: dict[str, str | int | float | bool] = {}  # extra sbatch options, e.g. {account: proj, qos: high}
    setup: list[str] = []  # shell lines run before each task, e.g. 'source ~/venv/bin/activate'


class Suite(Strict):
    name: str
    description: str = ""
    train: Train = Train()
    teacher: Teacher = Teacher()
    quant: Quant = Quant()
    selection: SelectionCfg = SelectionCfg()
    budget: Budget = Budget()
    grid: Grid
    # runtime settings: they do not change results and are not part of a cell's id
    device: str = "auto"
    eval_batch_size: Annotated[int, WHOLE, Field(gt=0)] = 1024
    cpu_threads: Annotated[int, WHOLE, Field(gt=0)] = 1  # a CPU cell's torch threads: fixed, so results reproduce
    wandb: WandbCfg = WandbCfg()
    slurm: SlurmCfg = SlurmCfg()

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)


def check_device(name: str) -> str:
    """cpu, cuda, cuda:N or auto: what every executor can place a cell on (else ValueError, before anything runs)."""
    kind, _, index = str(name).partition(":")
    if name in ("auto", "cpu", "cuda") or (kind == "cuda" and index.isascii() and index.isdigit()):
        return name
    raise ValueError(f"expected cpu, cuda, cuda:N or auto, got '{name}'")


def parse_bits(text: str) -> tuple[int, int]:
    """'W/A' -> (w_bits, a_bits); each 2..8 or 32 (full precision)."""
    from .quant import bits_supported

    parts = str(text).split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"expected bits written W/A such as '2/32' or '4/4', got '{text}'")
    if not str(text).isascii():  # int() reads other scripts' digits: '２/32' would pass as 2/32
        raise ValueError(f"expected W/A with ASCII digits, e.g. 2/32, got '{text}'")
    w, a = (int(p) for p in parts)
    for kind, b in (("weight", w), ("activation", a)):
        if not bits_supported(b):
            raise ValueError(f"{kind} bits {b} in '{text}' not supported: expected 2..8 or 32")
    return w, a
