"""The deployment recipes say only what labelbeam and Beam understand: the README's runner commands parse
(their Beam flags are known ones), each Flex Template parameter is a `labelbeam build` flag, and the
Flex Template image installs every source directory and launches an existing entry point."""
import ast
import json
import pathlib
import re
import shlex

import pytest

from labelbeam.pipelines.build import build_parser, pipeline_options

REPO = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "dataflow"


def readme_commands(section: str) -> list[list[str]]:
    """The `labelbeam build` commands in the README section's bash blocks, as argv lists."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            if words[:2] == ["labelbeam", "build"]:
                commands.append(words[2:])
    return commands


DEPLOY_COMMANDS = readme_commands("Deploy: Dataflow, Flink, Spark, Dask")


def test_the_deploy_section_shows_each_runner():
    runners = {argv[argv.index("--runner") + 1] for argv in DEPLOY_COMMANDS}
    assert runners == {"DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner",
                       "labelbeam.pipelines.dask_runner.DaskRunner"}


@pytest.mark.parametrize("argv", DEPLOY_COMMANDS, ids=lambda argv: argv[argv.index("--runner") + 1])
def test_each_deploy_command_parses_with_known_flags(argv):
    args, beam_args = build_parser().parse_known_args(argv)
    assert args.input and args.output and args.dataset
    options = pipeline_options(beam_args)   # a flag neither labelbeam nor Beam knows is a UserError here
    assert options.get_all_options()["runner"] == argv[argv.index("--runner") + 1]


def test_every_flex_template_parameter_is_a_build_flag():
    parameters = json.loads((DEPLOY / "metadata.json").read_text(encoding="utf-8"))["parameters"]
    required = {p["name"] for p in parameters if not p.get("isOptional")}
    assert required == {"input", "output", "dataset"}
    argv = [f"--{p['name']}=1" for p in parameters]   # a value every flag's type takes
    args, unknown = build_parser().parse_known_args(argv)
    assert unknown == []
    assert {p["name"].replace("-", "_") for p in parameters} <= set(vars(args))


def test_the_flex_template_image_installs_every_source_directory_and_launches_the_build():
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, flags=re.M))
    assert copied == {"pipelines", "transforms", "schemas"}
    [entry] = re.findall(r"FLEX_TEMPLATE_PYTHON_PY_FILE=\$\{WORKDIR\}/(\S+)", dockerfile)
    assert 'if __name__ == "__main__":' in (REPO / entry).read_text(encoding="utf-8")
    assert "FLEX_TEMPLATE_PYTHON_SETUP_FILE=${WORKDIR}/setup.py" in dockerfile


def test_the_scheduler_launch_body_names_only_template_parameters():
    body = json.loads((DEPLOY / "launch-body.json").read_text(encoding="utf-8"))["launchParameter"]
    template_parameters = {p["name"] for p in json.loads((DEPLOY / "metadata.json").read_text())["parameters"]}
    assert set(body["parameters"]) <= template_parameters
    args, unknown = build_parser().parse_known_args([f"--{k}={v}" for k, v in body["parameters"].items()])
    assert unknown == [] and args.as_of == "today"


def test_the_airflow_dag_is_python_whose_pipeline_options_are_build_or_beam_flags():
    # Airflow is not installed here: the DAG is compiled and its options checked, not imported.
    source = (REPO / "deploy" / "airflow" / "labelbeam_nightly.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    compile(tree, "labelbeam_nightly.py", "exec")
    [options] = [keyword.value for node in ast.walk(tree) if isinstance(node, ast.Call)
                 for keyword in node.keywords if keyword.arg == "pipeline_options"]
    names = [key.value for key in options.keys]
    args, beam_args = build_parser().parse_known_args([f"--{name}=1" for name in names])
    pipeline_options(beam_args)            # every flag the build does not take is a known Beam flag
    assert {"input", "output", "dataset", "as-of"} <= set(names)
