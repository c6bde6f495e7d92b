import json
import re
from pathlib import Path

import datasets
import pytest
from click.testing import CliRunner

from rankloop.app.cli import cli
from rankloop.app.config import ProjectConfig
from rankloop.app.project import Project
from rankloop.data.records import Label
from rankloop.settings import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=None, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def project(tmp_path, tiny_lm_dir):
    run("init", tmp_path / "p", "--policy", tiny_lm_dir)
    return tmp_path / "p"


def test_init_writes_every_setting_commented(project, tiny_lm_dir):
    assert (project / "rankloop.db").exists() and (project / "rounds").is_dir()
    text = (project / "rankloop.toml").read_text()
    assert f'policy = "{tiny_lm_dir}"' in text
    assert "# Responses sampled per prompt and round.\nn = 2\n" in text
    cfg = ProjectConfig.load(project / "rankloop.toml")
    assert cfg.models.policy == str(tiny_lm_dir)
    assert cfg.generate == ProjectConfig().generate
    result = run("init", project, ok=False)
    assert result.exit_code == 1 and "already holds a rankloop project" in result.output


def test_project_is_found_from_a_subfolder(project, monkeypatch):
    (project / "rounds" / "deep").mkdir()
    monkeypatch.chdir(project / "rounds" / "deep")
    assert Project.find().root == project.resolve()
    monkeypatch.chdir(project.parent)
    result = run("status", ok=False)
    assert result.exit_code == 1
    assert "no rankloop project here" in result.output and "Traceback" not in result.output


def test_import_generate_status_export(project, tmp_path):
    run("import", "--bundled", "--project", project)
    out = run(
        "generate", "--n", "2", "--limit", "3", "--max-new-tokens", "6", "--project", project
    ).output
    assert "6 new responses for 3 prompts" in out and "3 new comparisons" in out
    status = run("status", "--project", project).output
    assert re.search(r"prompts\s+│\s+84", status)
    assert re.search(r"responses, round 0\s+│\s+6", status)
    assert re.search(r"pending\s+│\s+3", status)
    # labels arrive through the store's API (the labeling app writes the same records)
    p = Project.find(project)
    ann, _ = p.store.add_annotator("ann")
    c = p.store.comparisons()[0]
    p.store.add_label(Label.pairwise(c.id, ann.id, c.response_ids, "A"))
    p.close()
    run("export", tmp_path / "prefs", "--project", project)
    ds = datasets.load_from_disk(str(tmp_path / "prefs"))
    assert ds.num_rows == 1 and ds[0]["annotator"] == "ann"
    run("export", tmp_path / "prefs.jsonl", "--format", "jsonl", "--project", project)
    assert json.loads((tmp_path / "prefs.jsonl").read_text())["round"] == 0


def test_bad_import_is_one_clear_line(project, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"question": "b"}\n')
    result = run("import", bad, "--project", project, ok=False)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: {bad}: line 2: missing column 'prompt' (columns here: question); name the "
        f"prompt column with --prompt-column"
    )
    assert (
        run("import", bad, "--prompt-column", "question", "--project", project, ok=False).exit_code
        == 1
    )  # line 1 lacks 'question': still nothing imported
    assert Project.find(project).store.prompts() == []


def test_bad_config_names_the_setting(project):
    toml = project / "rankloop.toml"
    toml.write_text(toml.read_text().replace("top_p = 0.95", "top_p = 7.0"))
    result = run("status", "--project", project, ok=False)
    assert "[generate] top_p must be in (0, 1]" in result.output
    toml.write_text(toml.read_text().replace("top_p = 7.0", "top_pp = 0.9"))
    assert (
        "[generate] has no setting 'top_pp'" in run("status", "--project", project, ok=False).output
    )


def test_missing_model_is_one_clear_line(tmp_path):
    run("init", tmp_path / "q", "--policy", tmp_path / "no-such-model")
    run("import", "--bundled", "--project", tmp_path / "q")
    result = run("generate", "--limit", "1", "--project", tmp_path / "q", ok=False)
    assert result.exit_code == 1
    assert "cannot load model" in result.output and "Traceback" not in result.output


def test_round_without_policy_explains(project):
    result = run("generate", "--round", "1", "--project", project, ok=False)
    assert "round 0 has no trained policy yet" in result.output


def commands(group, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        yield prefix + (name,), cmd
        if hasattr(cmd, "commands"):
            yield from commands(cmd, prefix + (name,))


def test_every_command_has_help_with_an_example_and_is_in_the_docs():
    docs = "".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    for path, cmd in commands(cli):
        out = run(*path, "--help").output
        assert "Example" in out, f"`rankloop {' '.join(path)} --help` has no example"
        assert f"rankloop {' '.join(path)}" in docs, f"`rankloop {' '.join(path)}` is undocumented"


def test_config_validation_messages():
    from rankloop.app.config import GenerateConfig
    from rankloop.settings import from_table

    with pytest.raises(ConfigError, match=r"\[generate\] n = 'two': expected <class 'int'>"):
        from_table(GenerateConfig, {"n": "two"}, "generate")
    with pytest.raises(ConfigError, match=r"\[generate\] n must be at least 1"):
        from_table(GenerateConfig, {"n": 0}, "generate")
    assert from_table(GenerateConfig, {"temperature": 1}, "generate").temperature == 1


def test_python_api_example_in_docs_runs(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "store.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    run("init", "myproject")
    exec(compile(code, "docs/store.md", "exec"), {})  # noqa: S102 - runs the docs' own example
    assert datasets.load_from_disk("prefs").num_rows == 3
