"""DeepCore adapter: run a method of the DeepCore library inside the harness.

DeepCore (https://github.com/PatrickZH/DeepCore, MIT) is not a dependency: a user puts a
checkout on PYTHONPATH and names ``deepcore:<Method>`` in a suite. The PyPI package called
``deepcore`` is an unrelated statistics library; it is detected and refused with a clear
error. DeepCore's code runs as it is, defects included (BASELINES.md lists them): the
adapter only feeds it what it expects and maps its answer to a ``Selection``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import logging
import sys
from types import ModuleType, SimpleNamespace
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from ..registry import did_you_mean
from ..seeding import derive_seed
from ..selection import Selection, SelectionContext, SelectionError, Selector

log = logging.getLogger(__name__)

DEEPCORE_URL = "https://github.com/PatrickZH/DeepCore"
SOURCE = "DeepCore (PYTHONPATH)"  # how `qcore-bench ls selectors` names where deepcore:* come from
_BASES = ("CoresetMethod", "EarlyTrain")  # DeepCore's abstract bases, not selection methods
_UNSUPPORTED = {"Full": "DeepCore's Full ignores the fraction; use the built-in selector 'full'"}
# set by the adapter itself (from the cell or its explicit parameters), so not accepted in params
_RESERVED = ("dst_train", "args", "fraction", "random_seed", "epochs", "specific_model", "balance")
# (channels, height, width) for which DeepCore's ResNet18 is built; other shapes default to its MLP
_RESNET_SHAPES = ((3, 32, 32), (1, 28, 28), (3, 224, 224), (1, 224, 224))
# torchvision >= 0.13 dropped the model_urls dicts DeepCore's nets read for pretrained weights
_TV_MODEL_URLS = {
    "resnet": {a: a for a in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                              "wide_resnet50_2", "wide_resnet101_2")},
    "vgg": {a: a for a in ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn")},
    "mobilenetv3": {a: a for a in ("mobilenet_v3_large", "mobilenet_v3_small")},
    "inception": {"inception_v3_google": "inception_v3"},
}


class DeepCoreError(RuntimeError):
    """DeepCore is missing, is the wrong package, or cannot run what was asked."""


def _location() -> str:
    spec = importlib.util.find_spec("deepcore")
    if spec is None:
        return "?"
    return spec.origin or next(iter(spec.submodule_search_locations or []), "?")


def load_deepcore() -> tuple[ModuleType, type]:
    """``deepcore.methods`` and its ``CoresetMethod`` base; DeepCoreError says what is wrong otherwise."""
    if importlib.util.find_spec("deepcore") is None:
        raise DeepCoreError(f"DeepCore is not importable: clone {DEEPCORE_URL} and put the checkout on "
                            "PYTHONPATH (the PyPI package named 'deepcore' is a different library)")
    wrong = (f"the importable 'deepcore' ({_location()}) is not DeepCore: it has no {{what}}; it is probably the "
             f"unrelated PyPI package 'deepcore' (pip uninstall deepcore), put a checkout of {DEEPCORE_URL} "
             "on PYTHONPATH instead")
    try:
        methods = importlib.import_module("deepcore.methods")
    except ModuleNotFoundError as exc:
        if exc.name in ("deepcore.methods", "deepcore"):
            raise DeepCoreError(wrong.format(what="deepcore.methods module")) from None
        raise DeepCoreError(f"DeepCore ({_location()}) failed to import: {exc}") from exc
    except Exception as exc:  # a broken checkout: say so instead of a traceback deep in its imports
        raise DeepCoreError(f"DeepCore ({_location()}) failed to import: {type(exc).__name__}: {exc}") from exc
    try:
        base = importlib.import_module("deepcore.methods.coresetmethod").CoresetMethod
    except (ImportError, AttributeError):
        base = None
    if not isinstance(base, type):
        raise DeepCoreError(wrong.format(what="deepcore.methods.coresetmethod.CoresetMethod"))
    return methods, base


def _supported(methods: ModuleType, base: type) -> dict[str, type]:
    return {name: obj for name, obj in vars(methods).items()
            if isinstance(obj, type) and issubclass(obj, base) and name not in _BASES and name not in _UNSUPPORTED}


def available_methods() -> list[str]:
    """The DeepCore methods this adapter runs; [] when DeepCore is not importable (or is the wrong package)."""
    try:
        return sorted(_supported(*load_deepcore()))
    except DeepCoreError:
        return []


def _in1d(ar1: Any, ar2: Any, assume_unique: bool = False, invert: bool = False, **kw: Any) -> np.ndarray:
    return np.isin(np.ravel(ar1), ar2, assume_unique=assume_unique, invert=invert, **kw)


def _apply_shims() -> None:
    """Put back what DeepCore uses and numpy 2 / torchvision >= 0.13 removed; only where it is missing."""
    if not hasattr(np, "in1d"):
        np.in1d = _in1d
    tvm = sys.modules.get("torchvision.models")  # imported by DeepCore's nets; a checkout without them needs none
    if tvm is None:
        return
    for module, names in _TV_MODEL_URLS.items():
        mod = getattr(tvm, module, None)
        if mod is not None and not hasattr(mod, "model_urls"):
            mod.model_urls = {key: tvm.get_model_weights(name)["IMAGENET1K_V1"].url for key, name in names.items()}


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class TrainView(torch.utils.data.Dataset):
    """The training set as DeepCore's ``dst_train``: ``classes``, tensor ``targets``, (image, label) items.

    ``transform`` starts as the identity: DeepCore composes a resize onto it for
    torchvision-pretrained models (Cal, ``torchvision_pretrain``).
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, num_classes: int) -> None:
        self.images, self.targets = images, targets.long().cpu()
        self.classes = [str(c) for c in range(num_classes)]
        self.transform: Callable[[torch.Tensor], torch.Tensor] = _identity

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), int(self.targets[i])


def _as_tensor(values: Any) -> torch.Tensor:
    # np.array copies: DeepCore returns reversed views (argsort(...)[::-1]) that torch cannot wrap
    return values.detach().cpu() if isinstance(values, torch.Tensor) else torch.as_tensor(np.array(values))


class DeepCoreSelector(Selector):
    """``deepcore:<Method>``: one of DeepCore's methods, run on the cell's training set before epoch 0.

    DeepCore trains its own model (``model``, ``epochs``, SGD at ``lr`` with DeepCore's
    defaults momentum 0.9, weight decay 5e-4, Nesterov, batch ``batch``) on the
    normalised, un-augmented training images with the cell's (possibly noisy) labels.
    ``balance`` (None: the suite's ``selection.balanced``) is DeepCore's per-class
    switch; ``params`` go to the method's constructor (e.g. ``selection_method`` for
    Uncertainty). ``torchvision_pretrain`` defaults to False so nothing is downloaded.

    ``variable_budget = True``: DeepCore rounds each class's share itself
    (``round(fraction * class size)``), so the count may differ from ``ctx.budget`` by a
    few samples; the difference is logged (``deepcore_budget_gap``) and a larger one is
    an error. Randomness: DeepCore seeds and draws from torch's and numpy's global
    generators; its seed is derived from the cell's seed and the epoch, and the
    harness's global RNG state is restored afterwards, but DeepCore's internal draws
    are its own (not from ``ctx.generator``). Its training is timed as selection, not
    counted in the proxy cost units.
    """

    variable_budget: ClassVar[bool] = True

    def __init__(self, method: str, balance: bool | None = None, epochs: int = 10, model: str | None = None,
                 lr: float = 0.1, batch: int = 128, params: dict[str, Any] | None = None) -> None:
        super().__init__()
        if not isinstance(method, str) or not method.isidentifier():
            raise ValueError(f"method must be the name of a DeepCore method (e.g. 'Uncertainty'), got {method!r}")
        if method in _BASES:
            raise ValueError(f"method '{method}' is a DeepCore base class, not a selection method")
        if method in _UNSUPPORTED:
            raise ValueError(f"method '{method}': {_UNSUPPORTED[method]}")
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if params is not None and not isinstance(params, dict):
            raise ValueError(f"params must be a mapping of constructor arguments, got {type(params).__name__}")
        for key in params or {}:
            if key in _RESERVED:
                raise ValueError(f"params.{key}: set by the adapter"
                                 + (f"; use the parameter '{key}'" if key in ("epochs", "balance") else
                                    "; use the parameter 'model'" if key == "specific_model" else ""))
        self.method, self.balance, self.epochs, self.model = method, balance, epochs, model
        self.lr, self.batch, self.params = lr, batch, dict(params or {})

    def _method_class(self, methods: ModuleType, base: type) -> type:
        supported = _supported(methods, base)
        if self.method not in supported:
            raise DeepCoreError(f"DeepCore ({_location()}) has no method '{self.method}'"
                                f"{did_you_mean(self.method, list(supported))}")
        cls = supported[self.method]
        known = {p for c in cls.__mro__ if c is not object
                 for p, v in inspect.signature(c.__init__).parameters.items() if v.kind is v.KEYWORD_ONLY
                 or v.kind is v.POSITIONAL_OR_KEYWORD}
        for key in self.params:
            if key not in known:
                raise DeepCoreError(f"params.{key}: DeepCore's {self.method} takes no such argument"
                                    f"{did_you_mean(key, sorted(known - set(_RESERVED) - {'self'}))}")
        return cls

    def _model_name(self, shape: tuple[int, int, int]) -> str:
        nets = importlib.import_module("deepcore.nets")
        name = self.model or ("ResNet18" if shape in _RESNET_SHAPES else "MLP")
        if not callable(getattr(nets, name, None)):
            choices = [k for k, v in vars(nets).items() if callable(v) and k[:1].isupper()]
            raise DeepCoreError(f"model '{name}' is not a network of deepcore.nets{did_you_mean(name, choices)}")
        return name

    def select(self, ctx: SelectionContext) -> Selection:
        methods, base = load_deepcore()
        cls = self._method_class(methods, base)
        images = ctx.train_images()
        if images.dim() != 4 or len(images) != len(ctx):
            raise DeepCoreError(f"training images must be [n={len(ctx)}, C, H, W], got {tuple(images.shape)}")
        shape = tuple(images.shape[1:])
        model = self._model_name(shape)
        balance = ctx.balanced if self.balance is None else self.balance
        seed = derive_seed(ctx.seed, "deepcore", ctx.epoch) % 2**32  # numpy's seed range
        dev = ctx.device
        multi_gpu = dev.type == "cuda" and torch.cuda.device_count() > 1
        gpu_index = (dev.index if dev.index is not None else torch.cuda.current_device()) if dev.type == "cuda" else None
        args = SimpleNamespace(
            device=str(dev), gpu=[gpu_index] if multi_gpu else None, num_classes=ctx.num_classes,
            channel=shape[0], im_size=shape[1:], model=model, specific_model=model, fraction=ctx.fraction,
            seed=seed, balance=balance, selection_epochs=self.epochs, selection_batch=self.batch,
            selection_lr=self.lr, lr=self.lr, selection_momentum=0.9, selection_weight_decay=5e-4,
            selection_nesterov=True, selection_optimizer="SGD", selection_test_interval=0,
            selection_test_fraction=1.0, workers=0, print_freq=100)
        view = TrainView(images, ctx.labels, ctx.num_classes)
        _apply_shims()
        printed = io.StringIO()
        np_state = np.random.get_state()
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(torch.random.fork_rng(devices=[gpu_index] if gpu_index is not None else []))
                if multi_gpu:  # DeepCore calls torch.cuda.set_device; this context undoes it
                    stack.enter_context(torch.cuda.device(gpu_index))
                stack.enter_context(contextlib.redirect_stdout(printed))
                result = cls(view, args, fraction=ctx.fraction, random_seed=seed, epochs=self.epochs,
                             specific_model=model, balance=balance,
                             **{"torchvision_pretrain": False, **self.params}).select()
        except Exception as exc:  # DeepCore's own failure: say which method, keep its traceback chained
            raise DeepCoreError(f"DeepCore {self.method} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            np.random.set_state(np_state)
            if printed.getvalue():
                log.debug("DeepCore %s printed:\n%s", self.method, printed.getvalue())
        return self._selection(result, ctx, balance)

    def _selection(self, result: Any, ctx: SelectionContext, balance: bool) -> Selection:
        """DeepCore's {"indices", "weights"?} as a Selection, its size checked against the budget."""
        if not isinstance(result, dict) or "indices" not in result:
            raise DeepCoreError(f"DeepCore {self.method}.select() returned {type(result).__name__}, "
                                "expected a dict with 'indices'")
        idx = _as_tensor(result["indices"]).reshape(-1)
        if idx.is_floating_point():  # np.append onto an empty float array turns indices into floats
            if not torch.equal(idx, idx.round()):
                raise SelectionError(f"DeepCore {self.method} returned non-integer indices")
        idx = idx.long()
        gap = len(idx) - ctx.budget
        tolerance = ctx.num_classes if balance else 1  # one rounding per class, or one overall
        if abs(gap) > tolerance:
            raise SelectionError(f"DeepCore {self.method} selected {len(idx)} samples for a budget of "
                                 f"{ctx.budget} (more than its per-class rounding explains)")
        weights = result.get("weights")
        if weights is not None:
            weights = _as_tensor(weights).float().reshape(-1)
        ctx.log(deepcore_selected=len(idx), deepcore_budget_gap=gap)
        return Selection(idx, weights)
