"""The supported stacks stay what the README says: constraints/oldest.txt pins every requirement of setup.py
(core and dev) at its lower bound, and environment.yaml pins the same versions (docs/setup.md, "Supported versions")."""

from __future__ import annotations

import ast
import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO

# torch is installed before the package (an installed build, CPU or CUDA, is kept), not through the constraints
INSTALLED_SEPARATELY = {"torch"}
TESTED_TORCH = "2.13.0"


def setup_requirements() -> list[Requirement]:
    """install_requires and the dev extra, read from setup.py without running it."""
    call = next(node for node in ast.walk(ast.parse((REPO / "setup.py").read_text()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup")
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
    return [Requirement(r) for r in kwargs["install_requires"] + kwargs["extras_require"]["dev"]]


def pins(lines: list[str]) -> dict[str, str]:
    """name -> version of every ``name==version`` line (comments and blank lines skipped)."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
            assert match, f"not a name==version pin: {line!r}"
            out[canonicalize_name(match[1])] = match[2]
    return out


def oldest() -> dict[str, str]:
    return pins((REPO / "constraints" / "oldest.txt").read_text().splitlines())


def environment_pins() -> dict[str, str]:
    lines = [line.strip()[2:] for line in (REPO / "environment.yaml").read_text().splitlines() if line.startswith("      - ")]
    return pins(lines)


def test_oldest_stack_pins_every_requirement_at_its_lower_bound():
    constraints = oldest()
    for req in setup_requirements():
        name = canonicalize_name(req.name)
        if name in INSTALLED_SEPARATELY:
            assert name not in constraints
            continue
        assert name in constraints, f"constraints/oldest.txt does not pin {req.name}"
        pinned = Version(constraints[name])
        lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert lower == [pinned], f"{req}: the oldest stack pins {pinned}, not the lower bound"
        assert req.specifier.contains(pinned), f"{req} does not allow the pinned {pinned}"


def test_environment_yaml_is_the_oldest_stack():
    env, constraints = environment_pins(), oldest()
    assert env.pop("torch") == TESTED_TORCH
    assert env, "environment.yaml pins nothing"
    for name, version in env.items():
        assert constraints.get(name) == version, f"environment.yaml pins {name}=={version}, constraints/oldest.txt {constraints.get(name)}"
    direct = {canonicalize_name(r.name) for r in setup_requirements()} - INSTALLED_SEPARATELY
    assert direct <= set(env), f"environment.yaml leaves out {sorted(direct - set(env))}"
