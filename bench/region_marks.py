"""Profiler marks around a model's parts: :class:`RegionMarks` adds ``record_function`` ranges
around its sub-modules, methods and the pansight functions it calls, without changing the model
code, and removes them on exit."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from types import ModuleType

from torch import nn
from torch.profiler import record_function

UNMARKED_METHODS = {"forward", "preprocess", "loss", "postprocess", "predict", "train", "eval"}
"""Model methods left unwrapped: the phases already mark them, or training does not call them."""


class RegionMarks:
    """``record_function`` ranges around a model's parts while it is open, removed on exit.

    Marked: every direct sub-module (``name (Class)``), every public method of the model's
    pansight classes but the phases (``name()``), and every pansight function bound in the
    namespace of the model's modules and of those functions' own modules (``name()``).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.labels: set[str] = set()
        self.open: list[record_function] = []
        self.undo: list[Callable[[], None]] = []

    def __enter__(self) -> RegionMarks:
        for name, child in self.model.named_children():
            self._hook(child, f"{name} ({type(child).__name__})")
        for name in self._methods():
            self._wrap_attribute(self.model, name, getattr(self.model, name), instance=True)
        for module in self._modules():
            for name, value in list(vars(module).items()):
                if inspect.isfunction(value) and value.__module__.startswith("pansight."):
                    self._wrap_attribute(module, name, value, instance=False)
        return self

    def __exit__(self, *exc: object) -> None:
        for undo in reversed(self.undo):
            undo()
        self.undo.clear()

    def _methods(self) -> Iterator[str]:
        classes = [c for c in type(self.model).__mro__ if c.__module__.startswith("pansight.")]
        seen = set()
        for cls in classes:
            for name, value in vars(cls).items():
                if name.startswith("_") or name in UNMARKED_METHODS or name in seen:
                    continue
                if inspect.isfunction(value):
                    seen.add(name)
                    yield name

    def _modules(self) -> list[ModuleType]:
        """The model's classes' modules, then the modules of the pansight functions they bind."""
        names = {c.__module__ for c in type(self.model).__mro__}
        for name in list(names):
            for value in vars(sys.modules[name]).values():
                if inspect.isfunction(value) and value.__module__.startswith("pansight."):
                    names.add(value.__module__)
        return [sys.modules[name] for name in sorted(names) if name.startswith("pansight.")]

    def _hook(self, module: nn.Module, label: str) -> None:
        self.labels.add(label)

        def enter(*_: object) -> None:
            mark = record_function(label)
            mark.__enter__()
            self.open.append(mark)

        def leave(*_: object) -> None:
            self.open.pop().__exit__(None, None, None)

        handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
        self.undo += [handle.remove for handle in handles]

    def _wrap_attribute(self, owner: object, name: str, call: Callable, instance: bool) -> None:
        label = f"{name}()"
        self.labels.add(label)

        @functools.wraps(call)
        def marked(*args: object, **kwargs: object) -> object:
            with record_function(label):
                return call(*args, **kwargs)

        setattr(owner, name, marked)
        if instance:
            self.undo.append(lambda: delattr(owner, name))
        else:
            self.undo.append(lambda: setattr(owner, name, call))
