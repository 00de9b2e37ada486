"""requirements-lock.txt (what `make test` / `make demo` install on CPython 3.11, Linux x86-64, with lk_ablate itself
installed --no-deps) holds every package that pyproject.toml asks for, extras of dependencies included, at a version
the declared range admits. `pip check` after the install does not see a dependency's extras (shtab comes only through
`jsonargparse[shtab]`): a lock without it installed cleanly and left `--print_completion` broken."""
from __future__ import annotations

import tomllib
from importlib.metadata import requires

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from cli_parsers import REPO


def _lock() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "requirements-lock.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _wanted() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra
             if not r.startswith("lk_ablate")]
    env = {"python_version": "3.11", "sys_platform": "linux", "platform_machine": "x86_64"}
    wanted = []
    for req in reqs:
        if req.marker and not req.marker.evaluate({**env, "extra": ""}):
            continue
        wanted.append(req)
        for extra in req.extras:  # the packages a dependency's extra brings (jsonargparse[shtab] -> shtab)
            for line in requires(req.name) or []:
                sub = Requirement(line)
                if sub.marker and sub.marker.evaluate({**env, "extra": extra}) \
                        and not sub.marker.evaluate({**env, "extra": ""}):
                    wanted.append(sub)
    return wanted


def test_the_lock_holds_every_declared_requirement_and_extra_in_range():
    pins = _lock()
    missing = [str(r) for r in _wanted() if canonicalize_name(r.name) not in pins]
    assert not missing, f"requirements-lock.txt lacks {missing}"
    outside = [f"{r} (locked {pins[canonicalize_name(r.name)]})" for r in _wanted()
               if not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)]
    assert not outside, f"requirements-lock.txt pins outside pyproject's ranges: {outside}"
    assert {"shtab", "pytest-xdist"} <= set(pins)
