"""Installs VLT's three packages: ``vlt_common`` and the two projects ``vltseg`` and ``vltdet``.

The projects live under ``projects/<Name>/<pkg>`` (Detectron2's layout for projects) and are
mapped to top-level packages with ``package_dir``. Dependencies are pinned in
``requirements.txt`` and installed by ``tools/install.sh``; Detectron2 comes from a repackaged
wheel that pip cannot resolve by itself, so nothing is declared in ``install_requires`` that would
make pip fetch a second torch.
"""
from setuptools import find_packages, setup

PROJECTS = {
    "vltseg": "projects/VLTSeg/vltseg",
    "vltdet": "projects/VLTDet/vltdet",
}


def _packages():
    packages = find_packages(include=["vlt_common", "vlt_common.*"])
    for name, path in PROJECTS.items():
        packages.append(name)
        packages += [f"{name}.{sub}" for sub in find_packages(where=path)]
    return packages


setup(
    name="vlt",
    version="0.1.0",
    description="Domain-generalized dense perception with vision-language ViTs on Detectron2",
    python_requires=">=3.10",
    packages=_packages(),
    package_dir=dict(PROJECTS),
    include_package_data=True,
)
