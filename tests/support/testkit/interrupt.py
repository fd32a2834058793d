"""Test-only: interrupt a search driver after N completed trials, as Ctrl+C would (a search plug-in,
``tune/plugins.py``; nothing in the service knows about it).

    from testkit.interrupt import InterruptPlugin
    run_search.main(argv, plugins=[InterruptPlugin()])     # with PAHCL_TUNE_INTERRUPT_AFTER=N set
"""
from __future__ import annotations

import os

from ray import tune as ray_tune

ENV = "PAHCL_TUNE_INTERRUPT_AFTER"


class InterruptAfterTrials(ray_tune.Callback):
    """When ``PAHCL_TUNE_INTERRUPT_AFTER`` is set to N, send this driver SIGUSR1 (Tune's graceful-stop
    signal, like Ctrl+C) once N trials have completed. The variable is read at call time, so a restored
    search (which unpickles this callback) runs to the end when it is unset."""

    def __init__(self):
        self.completed = 0
        self.sent = False

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.completed += 1
        n = os.environ.get(ENV)
        if n and not self.sent and self.completed >= int(n):
            import signal

            self.sent = True
            print(f"[search] {ENV}={n}: interrupting the driver (SIGUSR1) to simulate Ctrl+C")
            os.kill(os.getpid(), signal.SIGUSR1)


class InterruptPlugin:
    """Adds :class:`InterruptAfterTrials` to the driver's Tuner."""

    def tune_callbacks(self):
        return [InterruptAfterTrials()]


def plugin() -> InterruptPlugin:
    """``PAHCL_SEARCH_PLUGINS=testkit.interrupt:plugin`` (a driver subprocess)."""
    return InterruptPlugin()
