"""The package's shape: imports point down the stages, and modules stay small."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "tunellm"
LAYERS = {
    "errors": 0, "registry": 0, "config": 0, "atomic": 0, "host_memory": 0,
    "data": 1, "models": 1, "methods": 1,
    "train": 2, "evaluate": 2, "infer": 2, "doctor": 2,
    "cli": 3, "ui": 3, "serve": 3,
}  # fmt: skip
# The config assembles the plug-ins' choices from their registries: the one upward import allowed, of packages whose
# import loads no torch and nothing of the config but `config.section` (tests/unit/test_config.py checks both).
PLUGIN_REGISTRIES = {"config/schema.py": {"tunellm.data.formats"}, "config/methods.py": {"tunellm.methods"}}


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "tunellm" else None


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_imports_point_down_the_stages():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if own not in LAYERS:
            continue
        for name in imported_modules(path):
            target = stage(name)
            allowed = PLUGIN_REGISTRIES.get(path.relative_to(PACKAGE).as_posix(), set())
            if target in LAYERS and LAYERS[target] > LAYERS[own] and name.removesuffix(".base") not in allowed:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not wrong, "imports must point down (cli -> train -> data -> config):\n" + "\n".join(wrong)


def test_every_top_level_folder_is_a_known_stage():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert folders <= set(LAYERS) | {"samples"}


def test_modules_stay_under_400_lines():
    sizes = {p.relative_to(PACKAGE): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    big = {str(path): lines for path, lines in sizes.items() if lines > 400}
    assert not big, big


def test_test_files_have_unique_names():
    # the test folders are not packages, so pytest imports two files of the same name as one module and stops
    tests = PACKAGE.parent / "tests"
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted(tests.rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(tests)} and {path.relative_to(tests)}")
        seen.setdefault(path.name, path)
    assert not clashes, clashes
