"""The one thing pyproject.toml cannot say: find every package under cds_service/ AND ship the
repository's top-level mappings/ inside the wheel as the package data cds_service/mappings/ (a
``package-dir`` entry needs an explicit package list, which would leave out packages added later).
Everything else about the build is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(include=["cds_service", "cds_service.*"], exclude=["*.__pycache__"]),
        "cds_service.mappings",
    ],
    package_dir={"cds_service.mappings": "mappings"},
)
