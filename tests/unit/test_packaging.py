"""The installed package's metadata: its license, its type hints and the Ray range it accepts."""

from __future__ import annotations


def test_the_installed_package_says_its_license_types_and_ray_range():
    from importlib import metadata, resources

    from packaging.requirements import Requirement
    from packaging.version import Version

    meta = metadata.metadata("distributed-grid")
    assert meta["License-Expression"] == "Apache-2.0"
    assert resources.files("distributed_grid").joinpath("py.typed").is_file()
    ray = next(Requirement(r) for r in meta.get_all("Requires-Dist") if r.startswith("ray"))
    assert Version(metadata.version("ray")) in ray.specifier  # the Ray under test is in range
    assert Version("3.0") not in ray.specifier  # private Ray APIs: no untested major
