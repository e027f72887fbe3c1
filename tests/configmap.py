"""A policy directory laid out as the kubelet lays out a ConfigMap volume (pkg/volume/util/
atomic_writer.go): the data in a hidden timestamped directory, ..data -> it, NAME -> ..data/NAME."""

import os
from pathlib import Path


def write_configmap(d: Path, files: dict[str, str], stamp: str) -> None:
    """The kubelet's write or update: a new timestamped directory, ..data replaced by rename(2), and a
    NAME -> ..data/NAME link for each key that has none yet."""
    (d / stamp).mkdir(mode=0o755)
    for name, text in files.items():
        (d / stamp / name).write_text(text)
        (d / stamp / name).chmod(0o644)
    (d / "..data_tmp").symlink_to(stamp)
    os.replace(d / "..data_tmp", d / "..data")
    for name in files:
        if not (d / name).is_symlink():
            (d / name).symlink_to(f"..data/{name}")
