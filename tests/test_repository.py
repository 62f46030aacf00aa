"""Repository-level consistency: README commands, CI script, generated model cards."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    test_command = blocks[0].strip()
    assert "pytest" in test_command and test_command.startswith("pip install torch==2.13.0")
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines
    assert blocks[1].strip().startswith("zsad detect ")


def test_model_cards_are_up_to_date(tmp_path):
    spec = importlib.util.spec_from_file_location("make_model_cards", ROOT / "examples" / "make_model_cards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for generated in module.generate(tmp_path):
        committed = ROOT / "model_cards" / generated.name
        assert committed.exists(), f"missing {committed}: run python examples/make_model_cards.py"
        assert committed.read_text() == generated.read_text(), f"{committed.name} is stale: run python examples/make_model_cards.py"


def test_docs_cite_no_file_outside_the_repository():
    outside = re.compile(r"METHODS\.md|DESIGN\.md|CHECKPOINTS\.md|ECOSYSTEM\.md|\.\./shared")
    files = [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("model_cards/*.md"),
             *ROOT.glob("src/**/*.py"), *ROOT.glob("src/**/*.md"), *ROOT.glob("examples/**/*.py")]
    cited = [f"{path.relative_to(ROOT)}:{number}" for path in files
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if outside.search(line)]
    assert not cited, cited


def test_gitignore_covers_the_folders_the_readme_creates():
    import subprocess

    import pytest

    if subprocess.run(["git", "rev-parse", "--git-dir"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    readme = (ROOT / "README.md").read_text()
    created = set(re.findall(r"--out ([\w.-]+)", readme))
    assert {"zsad_output", "tiny-clip", "zsad_smoke"} <= created
    for folder in created:
        result = subprocess.run(["git", "check-ignore", "-q", f"{folder}/x"], cwd=ROOT)
        assert result.returncode == 0, f"{folder}/ is not in .gitignore"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"zsad_{name}_script", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_protocol_argument_files_parse():
    """Every file of examples/protocols/ is accepted by its script; AdaCLIP trains on two datasets (§1)."""
    from zsad.train import parse_args as train_args  # examples/train.py runs zsad.train

    evaluate = _script("evaluate")
    protocols = sorted((ROOT / "examples" / "protocols").glob("*.args"))
    methods = set()
    for path in protocols:
        if "_train_" in path.name:
            args = train_args([f"@{path}"])
            methods.add(args.method + ("+" if args.model_config.get("dino_attention") else ""))
            expected = {"mvtec_colondb": ["data/mvtec_ad", "data/colondb"], "visa_clinicdb": ["data/visa", "data/clinicdb"]}
            if args.method == "adaclip":
                assert args.dataset == next(v for k, v in expected.items() if k in path.name), path.name
            else:
                assert len(args.dataset) == 1, path.name
        else:
            assert evaluate.parse_args([f"@{path}"]).datasets, path.name
    assert methods == {"anomalyclip", "adaclip", "crane", "crane+"}
