"""Extension points of the search service: plug-ins add Ray Tune callbacks to the driver's Tuner and
``pahcl.train`` callbacks / trial-event observers to every trial, so that instrumentation (benchmarks)
and fault injection (tests) never patch the service.

    PAHCL_SEARCH_PLUGINS=pkg.mod:factory[,pkg.mod:factory]   # read by run_search.main (CLI and in-process)
    run_search.main(argv, plugins=[obj], tuner_factory=f)     # in-process: plug-in objects, another Tuner

A factory is called once in the driver with no arguments and returns a plug-in object (or None: nothing
to add). A plug-in must be picklable (it travels to every trial with ``tune.with_parameters``; its module
must be importable there, e.g. through ``PYTHONPATH``). Every method is optional:

    tune_callbacks() -> list[ray.tune.Callback]     # driver: appended to the Tuner's RunConfig callbacks
                                                   # (a restored search keeps the callbacks it was started with)
    trial_hooks(trial_id, trial_dir) -> obj | None  # each trial: a ``pahcl.train.Callback`` (inserted after the
                                                   # MLflow step logger, before the report), which may also
                                                   # have ``event(name, **info)`` for the trial's events

Trial events (``TrialEvents``): ``trial_start``, ``report``, ``reported``, ``error``, ``mlflow_warning``,
``mlflow_spilled`` (see ``tune/trainable.py``). Example: ``tests/support/testkit/faults.py``.
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Iterable

from pahcl.config import ConfigError

ENV = "PAHCL_SEARCH_PLUGINS"


class PluginError(ConfigError):
    """A plug-in spec that cannot be loaded (the CLI reports it as a configuration error, exit 2)."""


def load(spec: str) -> Any:
    """``module:function`` -> what ``function()`` returns (a plug-in object or None)."""
    mod_name, sep, fn_name = spec.strip().partition(":")
    if not sep or not mod_name or not fn_name:
        raise PluginError(f"{ENV}: {spec!r} is not module:function; set it to e.g. mypkg.plugins:make or unset it")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise PluginError(f"{ENV}: cannot load {spec!r} ({type(e).__name__}: {e}); make the module importable "
                          "(PYTHONPATH) or unset the variable") from None
    return fn()


def from_env(environ=None) -> list[Any]:
    """The plug-ins named by ``PAHCL_SEARCH_PLUGINS`` (comma-separated specs), factories that returned None
    left out."""
    environ = os.environ if environ is None else environ
    specs = [s for s in (environ.get(ENV) or "").split(",") if s.strip()]
    return [p for p in (load(s) for s in specs) if p is not None]


def tune_callbacks(plugins: Iterable[Any]) -> list[Any]:
    """The Ray Tune callbacks every plug-in adds to the driver's Tuner."""
    out: list[Any] = []
    for p in plugins:
        if hasattr(p, "tune_callbacks"):
            out.extend(p.tune_callbacks() or ())
    return out


def trial_hooks(plugins: Iterable[Any], trial_id: str, trial_dir: str | None) -> list[Any]:
    """Each plug-in's per-trial object (Trainer callback, optional ``event``), None left out."""
    hooks = (p.trial_hooks(trial_id, trial_dir) for p in plugins if hasattr(p, "trial_hooks"))
    return [h for h in hooks if h is not None]


class TrialEvents:
    """Fans a trial's events out to every hook that has ``event``; ``bool()`` says whether any listens."""

    def __init__(self, hooks: Iterable[Any]):
        self.listeners = [h for h in hooks if hasattr(h, "event")]

    def __bool__(self) -> bool:
        return bool(self.listeners)

    def __call__(self, name: str, **info: Any) -> None:
        for h in self.listeners:
            h.event(name, **info)
