"""Public interaction datasets, prepared for ``postwise recommend evaluate --dataset``.

Nothing is downloaded here and no dataset ships with postwise (their licences do not allow
redistribution): you fetch the package that carries the data with its ordinary client, and
:func:`prepare` turns it into files ``--dataset`` reads (see :mod:`postwise.recommend.datasets`).

* ``movielens`` — MovieLens 100k (films, 943 people, 100,000 ratings with times), inside the
  ``recbole`` 1.2.1 wheel: ``pip download --no-deps recbole==1.2.1 -d /tmp/recbole``. Copies
  ``recbole/dataset_example/ml-100k/ml-100k.{inter,item}`` out of the wheel.
* ``supermarket`` — 4,627 supermarket baskets over 216 product departments (no times), Weka's
  ``supermarket.arff`` in Debian's ``weka`` package: ``apt-get download weka``. Writes
  ``interactions.csv`` (one basket per contact) and ``items.csv``.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Final

from postwise.errors import ValidationError

__all__ = ["DATASETS", "prepare"]

DATASETS: Final = ("movielens", "supermarket")

_ML_MEMBERS: Final = (
    "recbole/dataset_example/ml-100k/ml-100k.inter",
    "recbole/dataset_example/ml-100k/ml-100k.item",
)
_WEKA_MEMBER: Final = "usr/share/doc/weka/examples/supermarket.arff"


def prepare(name: str, source: Path, out: Path) -> Path:
    """Write dataset ``name`` from ``source`` (the wheel, .deb, or extracted file) to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if name == "movielens":
        return _movielens(source, out)
    if name == "supermarket":
        return _supermarket(source, out)
    raise ValidationError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def _movielens(source: Path, out: Path) -> Path:
    wheel = source
    if source.is_dir():
        wheels = sorted(source.glob("recbole-*.whl"))
        if not wheels:
            raise ValidationError(f"{source} holds no recbole-*.whl; see the module help")
        wheel = wheels[-1]
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member in _ML_MEMBERS:
                (out / Path(member).name).write_bytes(archive.read(member))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ValidationError(f"{wheel} is not the recbole 1.2.1 wheel ({exc})") from None
    return out


def _supermarket(source: Path, out: Path) -> Path:
    text = _arff_text(source)
    attributes: list[str] = []
    rows: list[list[str]] = []
    in_data = False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("%"):
            continue
        lower = stripped.lower()
        if lower.startswith("@attribute"):
            match = re.match(r"@attribute\s+('([^']*)'|\S+)", stripped, re.IGNORECASE)
            if match:
                attributes.append(match.group(2) if match.group(2) is not None else match.group(1))
        elif lower.startswith("@data"):
            in_data = True
        elif in_data:
            rows.append(stripped.split(","))
    if not attributes or not rows:
        raise ValidationError(f"{source}: no ARFF attributes or data found")
    departments = [(index, name) for index, name in enumerate(attributes) if name != "total"]
    with (out / "items.csv").open("w", encoding="utf-8") as handle:
        handle.write("id,title\n")
        for index, name in departments:
            handle.write(f"d{index},{name.replace(',', ' ')}\n")
    with (out / "interactions.csv").open("w", encoding="utf-8") as handle:
        handle.write("contact_id,item_id\n")
        for basket, values in enumerate(rows, start=1):
            for index, _ in departments:
                if index < len(values) and values[index].strip() == "t":
                    handle.write(f"{basket},d{index}\n")
    return out


def _arff_text(source: Path) -> str:
    if source.suffix == ".deb":
        with tempfile.TemporaryDirectory() as directory:
            subprocess.run(["dpkg-deb", "-x", str(source), directory], check=True)  # noqa: S603,S607
            return (Path(directory) / _WEKA_MEMBER).read_text(encoding="utf-8")
    return source.read_text(encoding="utf-8")
