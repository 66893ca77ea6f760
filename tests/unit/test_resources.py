"""Resource hints (issue 17, item 2): the plugin's ``resources``, the submission's
``resources=`` / ``--resource NAME=N``, and how they merge into the JobSpec."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from casparian_nb.cli import main
from casparian_nb.errors import ConfigError, PluginError
from casparian_nb.plugins import check_resources, inspect_plugin
from casparian_nb.protocol import JobSpec, SubmitJobs
from casparian_nb.sentinel._submit import job_resources, job_spec_from_row

PARSE = "def parse(path, ctx=None):\n    return None\n"


def test_a_plugin_declares_the_resources_one_job_needs(tmp_path: Path) -> None:
    plugin = tmp_path / "gpu.py"
    plugin.write_text('resources = {"GPU": 1, "MEMORY": 8e9}\n' + PARSE)
    assert inspect_plugin(plugin).resources == {"GPU": 1.0, "MEMORY": 8e9}
    plain = tmp_path / "plain.py"
    plain.write_text(PARSE)
    assert inspect_plugin(plain).resources is None


@pytest.mark.parametrize(("literal", "says"), [
    ('["GPU"]', "must be a dict"),
    ('{"GPU": 0}', "positive number"),
    ('{"GPU": "one"}', "positive number"),
    ('{"GPU": True}', "positive number"),
    ('{"": 1}', "not a resource name"),
])
def test_bad_plugin_resources_are_one_line_naming_the_file_and_line(
        tmp_path: Path, literal: str, says: str) -> None:
    plugin = tmp_path / "bad.py"
    plugin.write_text(f"x = 1\nresources = {literal}\n" + PARSE)
    with pytest.raises(PluginError) as info:
        inspect_plugin(plugin)
    text = str(info.value)
    assert "\n" not in text and str(plugin) in text and "line 2" in text and says in text


def test_the_submission_adds_to_and_overrides_the_plugins_resources() -> None:
    assert job_resources(None, None) is None
    assert job_resources({"GPU": 1.0}, None) == {"GPU": 1.0}
    assert job_resources({"GPU": 1.0}, {"GPU": 2, "MEMORY": 1e9}) == {"GPU": 2.0,
                                                                     "MEMORY": 1e9}
    with pytest.raises(ConfigError, match="positive number"):
        job_resources(None, {"GPU": -1})
    with pytest.raises(ConfigError):
        check_resources("GPU=1")


def test_resources_travel_in_the_jobspec_and_the_submit_request() -> None:
    spec = JobSpec(job_id="1", input_file="/in", plugin_path="/p.py", plugin_name="p",
                   sink="parquet:///out", resources={"GPU": 1.0})
    assert msgspec.json.decode(msgspec.json.encode(spec), type=JobSpec) == spec
    old = msgspec.json.encode(JobSpec(job_id="1", input_file="/in", plugin_path="/p.py",
                                      plugin_name="p", sink="parquet:///out"))
    assert b"resources" not in old  # additive: a spec without them is encoded as before
    req = SubmitJobs(plugin="/p.py", inputs=["/in"], resources={"GPU": 1.0})
    assert msgspec.json.decode(msgspec.json.encode(req), type=SubmitJobs).resources == {
        "GPU": 1.0}


def test_a_restored_job_gets_the_resources_it_was_submitted_with() -> None:
    """The submission's merged resources are stored with the job (``resources_json``), so a
    restarted sentinel dispatches with them, whatever the plugin file now says."""
    row = {"id": 7, "input_file": "/in", "plugin_name": "gpu", "sink_uri": "parquet:///o",
           "resources_json": '{"GPU":1.0,"mem":4.0}'}
    assert job_spec_from_row(row, "/gone.py").resources == {"GPU": 1.0, "mem": 4.0}
    assert job_spec_from_row({**row, "resources_json": None}, "/gone.py").resources is None


@pytest.mark.parametrize("value", ["GPU", "GPU=", "GPU=many", "GPU=0", "=1"])
def test_a_bad_resource_option_is_one_line_exit_2(
        value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plugin = tmp_path / "p.py"
    plugin.write_text(PARSE)
    assert main(["--home", str(tmp_path / "home"), "submit", str(plugin), str(plugin),
                 "--resource", value]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("casparian: error: ") and "--resource" in line, line
