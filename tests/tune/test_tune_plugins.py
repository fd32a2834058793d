"""The search service's extension points (tune/plugins.py): plug-in specs from PAHCL_SEARCH_PLUGINS, the
driver's Tune callbacks, the trials' hooks and event fan-out; a bad spec is one clear error (exit 2)."""
from __future__ import annotations

import pytest

from testkit.faults import FaultInjector, FaultPlan, env_vars
from testkit.interrupt import InterruptAfterTrials
from tune.plugins import ENV, PluginError, TrialEvents, from_env, load, trial_hooks, tune_callbacks


def test_specs_load_factories_and_skip_the_ones_returning_none(tmp_path, monkeypatch):
    log = tmp_path / "events.jsonl"
    env = env_vars([{"kind": "stall", "at_step": 0, "seconds": 0}], log)
    assert env[ENV] == "testkit.faults:plugin"
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # the fault factory reads PAHCL_FAULTS* from the driver's environment
    plugins = from_env({ENV: "testkit.faults:plugin, testkit.interrupt:plugin"})
    assert [type(p).__name__ for p in plugins] == ["FaultPlan", "InterruptPlugin"]
    assert plugins[0].spec == {"faults": [{"kind": "stall", "at_step": 0, "seconds": 0}], "log": str(log)}
    monkeypatch.delenv("PAHCL_FAULTS")
    monkeypatch.delenv("PAHCL_FAULTS_LOG")
    assert from_env() == []  # PAHCL_SEARCH_PLUGINS set, no PAHCL_FAULTS*: the factory adds nothing
    assert from_env({}) == []


def test_callbacks_and_trial_hooks_come_from_the_plugins_that_have_them(tmp_path):
    from testkit.interrupt import InterruptPlugin

    plan = FaultPlan({"faults": [], "log": str(tmp_path / "ev.jsonl")})
    plugins = [plan, InterruptPlugin(), object()]
    cbs = tune_callbacks(plugins)
    assert len(cbs) == 1 and isinstance(cbs[0], InterruptAfterTrials)
    hooks = trial_hooks(plugins, "t1", str(tmp_path))
    assert len(hooks) == 1 and isinstance(hooks[0], FaultInjector) and hooks[0].trial_id == "t1"
    events = TrialEvents(hooks)
    assert events and not TrialEvents([])
    events("trial_start", resumed_from_epoch=None)
    from testkit.faults import read_events

    (e,) = read_events(tmp_path / "ev.jsonl")
    assert e["event"] == "trial_start" and e["trial_id"] == "t1" and e["resumed_from_epoch"] is None


@pytest.mark.parametrize("spec, says", [("testkit.faults", "is not module:function"),
                                        ("no_such_module_xyz:make", "cannot load 'no_such_module_xyz:make'"),
                                        ("testkit.faults:no_such_factory", "AttributeError")])
def test_bad_spec_is_a_config_error_naming_the_variable(spec, says):
    with pytest.raises(PluginError, match=ENV) as ei:
        load(spec)
    assert says in str(ei.value)


def test_cli_reports_a_bad_spec_in_one_line_exit_2(tmp_path, monkeypatch, capsys, space_file):
    from tune.run_search import cli

    monkeypatch.setenv(ENV, "no_such_module_xyz:make")
    rc = cli(["--space", str(space_file()), "--results-dir", str(tmp_path / "r"), "--max-failures", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "PAHCL_SEARCH_PLUGINS: cannot load" in err, err
