"""The pre-Ray guard: is this search able to measure what it ranks, on this data?

Called by ``tune/run_search.py`` after the data is loaded and the resources are planned, before any
MLflow run or Ray trial exists. It prints, for the space's configurations (each searched value tried
in turn, the others at their first candidate):

* training cycles, optimizer steps per epoch (``pahcl.train`` batching: full micro-batches, the
  accumulation group, ``max_steps_per_epoch``) and per trial (x ``max_epochs``);
* the search's estimated cost: trial-epochs (no early stopping) x steps x the probe's step time
  (only when the probe ran: ``--gpus-per-trial auto`` on CUDA), spread over the concurrent trials.

and refuses (``GuardError``, exit 2) a MoCo search where

* the largest ``model.queue_size`` exceeds the training cycles (the queue would hold stale copies of
  the same cycles as negatives), or
* the shortest trial cannot reach ``1 / (1 - m)`` optimizer steps for the largest momentum ``m``
  (the key encoder's time constant: ranking momenta there ranks training length).

``--allow-degenerate`` (or ``guard: warn`` in a space file or budget, used by the CPU demo and smoke
budgets, which are sized for minutes on 2 cores) turns the refusal into a warning.
"""
from __future__ import annotations

from typing import Any, Callable

from pahcl.config import ConfigError


class GuardError(ConfigError):
    """The search would rank something other than what it claims to; the message says what to do."""


def _candidate_overrides(space) -> list[dict[str, Any]]:
    """One override set per searched value (others at their first candidate), plus the all-first one."""
    first = {k: d.candidates()[0] for k, d in space.params.items()}
    out = [space.trial_overrides(first)]
    for k, d in space.params.items():
        for v in d.candidates()[1:]:
            out.append(space.trial_overrides({**first, k: v}))
    return out


def search_plan(space, n_train: int) -> dict[str, Any]:
    """Steps per epoch / per trial, queue and momentum bounds over the space's configurations."""
    from pahcl.config import build_config
    from pahcl.train import _Batches

    tree = space.base_tree()
    steps, queues, moms, moco = [], [], [], False
    for ov in _candidate_overrides(space):
        cfg = build_config(tree, ov)
        t = cfg.training
        steps.append(_Batches.plan(n_train, t.batch_size, t.gradient_accumulation_steps, t.max_steps_per_epoch)[1])
        if cfg.model.use_moco:
            moco = True
            queues.append(cfg.model.queue_size)
            moms.append(cfg.model.moco_momentum)
    return {"train_cycles": n_train, "steps_per_epoch_min": min(steps), "steps_per_epoch_max": max(steps),
            "max_epochs": space.max_epochs, "steps_per_trial_min": min(steps) * space.max_epochs,
            "steps_per_trial_max": max(steps) * space.max_epochs, "moco": moco,
            "queue_max": max(queues) if queues else 0, "momentum_max": max(moms) if moms else None}


def _cost(plan: dict, space, seeds: int, res) -> str:
    trials = space.num_samples * seeds
    trial_epochs = trials * space.max_epochs
    steps = trial_epochs * plan["steps_per_epoch_max"]
    conc = max(1, min(space.max_concurrent_trials, res.trials_per_gpu or space.max_concurrent_trials))
    head = f"{trials} trials x {space.max_epochs} epochs = {trial_epochs} trial-epochs, <= {steps} optimizer steps"
    if not res.step_s:
        return head + " (no step time: the probe runs for --gpus-per-trial auto on CUDA; validation not included)"
    hours = steps * float(res.step_s) / 3600
    return (head + f" x {float(res.step_s):.3f} s/step (probe, largest configuration) = {hours:.2f} h of steps, "
            f"about {hours / conc:.2f} h wall with {conc} concurrent trials (no early stopping; validation "
            "not included)")


def _span(plan: dict, key: str) -> str:
    lo, hi = plan[f"{key}_min"], plan[f"{key}_max"]
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def check_search(space, n_train: int, res, seeds: int = 1, allow: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Print the plan; raise ``GuardError`` on a degenerate search unless allowed. Returns the plan."""
    plan = search_plan(space, n_train)
    log(f"[guard] {n_train} training cycles; {_span(plan, 'steps_per_epoch')} optimizer steps per epoch, "
        f"{_span(plan, 'steps_per_trial')} per {space.max_epochs}-epoch trial")
    log(f"[guard] estimated cost: {_cost(plan, space, seeds, res)}")
    problems = []
    if plan["moco"] and plan["queue_max"] > n_train:
        problems.append(f"model.queue_size {plan['queue_max']} exceeds the {n_train} training cycles (the queue "
                        "would hold repeated copies of the same cycles as negatives)")
    m = plan["momentum_max"]
    if plan["moco"] and m is not None and m < 1:
        need = 1.0 / (1.0 - m)
        plan["momentum_steps"] = need
        log(f"[guard] largest model.moco_momentum {m}: time constant 1/(1-m) = {need:.0f} steps; the shortest "
            f"trial runs {plan['steps_per_trial_min']} ({plan['steps_per_trial_min'] / need:.1f}x)")
        if plan["steps_per_trial_min"] < need:
            problems.append(f"a {space.max_epochs}-epoch trial runs only {plan['steps_per_trial_min']} optimizer "
                            f"steps, fewer than 1/(1-m) = {need:.0f} for model.moco_momentum {m} (ranking momenta "
                            "would rank training length)")
    if problems:
        how = ("pass --data KIND:PATH with more cycles, a budget sized for this machine (e.g. --budget "
               "synthetic_cuda), or raise max_epochs / lower the batch size or queue; --allow-degenerate runs it "
               "anyway")
        text = "; ".join(problems)
        if allow or space.raw.get("guard") == "warn":
            why = "--allow-degenerate" if allow else f"guard: warn in {space.path.name}"
            log(f"[guard] WARNING ({why}): {text}")
        else:
            raise GuardError(f"search guard: {text}. Fix: {how}")
    return plan
