"""What the code imports is declared in pyproject.toml, and the known-bad packages stay out."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "pipelines", "encoder", "store", "soe", "dags", "bench")
FIRST_PARTY = {*PACKAGES, "tests"}


def declared() -> dict[str, set[str]]:
    """extra name ("" = the runtime dependencies) -> normalised distribution names."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = {"": project["dependencies"], **project["optional-dependencies"]}
    return {k: {norm(re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0]) for req in v} for k, v in groups.items()}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules() -> dict[str, set[str]]:
    """top-level module -> files importing it, over every first-party package."""
    out: dict[str, set[str]] = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else (
                        [node.module]
                        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                        else []
                    )
                )
                for name in names:
                    out.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return out


def test_every_third_party_import_is_declared():
    dists = md.packages_distributions()
    groups = declared()
    everything = set().union(*groups.values())
    missing = {}
    for module, files in imported_modules().items():
        if module in FIRST_PARTY or module in sys.stdlib_module_names or module == "__future__":
            continue
        owners = {norm(d) for d in dists.get(module, [])}
        assert owners, f"{module} (imported by {sorted(files)[:3]}) is not installed"
        if not owners & everything:
            missing[module] = sorted(files)[:3]
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"


def test_runtime_code_needs_no_dev_only_package():
    """core/pipelines/encoder/store import only runtime dependencies (the dev extra is for tests and lint)."""
    dists = md.packages_distributions()
    runtime = declared()[""]
    for module, files in imported_modules().items():
        if module in FIRST_PARTY or module in sys.stdlib_module_names or module == "__future__":
            continue
        owners = {norm(d) for d in dists.get(module, [])}
        component_files = [f for f in files if f.split("/")[0] in ("core", "pipelines", "encoder", "store")]
        if component_files and not owners & runtime:
            # optional heavy imports inside functions are allowed only for the declared extras
            extras = set().union(*(v for k, v in declared().items() if k in ("airflow", "gpu")))
            assert owners & extras, f"{module} is used by {component_files[:3]} but is no runtime dependency"


def test_the_spark_provider_does_not_pull_pyspark_client():
    """pyspark-client overwrites pyspark's files (mapInArrow then fails): the provider is pinned below 6."""
    installed = {norm(d.metadata["Name"]) for d in md.distributions()}
    assert "pyspark-client" not in installed
    assert norm("pyspark") in installed and md.version("pyspark").startswith("4.")


def test_pandas_is_in_pysparks_supported_range():
    major = int(md.version("pandas").split(".")[0])
    assert major < 3, "PySpark 4.x supports pandas < 3 (it warns, and the Arrow bridge may break, above)"
