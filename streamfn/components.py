"""What a component's ``build`` gets from the pipeline around it."""

from __future__ import annotations

from pathlib import Path

import msgspec

from .aws import AwsSettings


class BuildContext(msgspec.Struct, frozen=True):
    """The pipeline a component is built for: its name, the config's folder, its state folder and
    its ``[aws]`` section (what AWS parts use where they set nothing of their own)."""

    pipeline: str
    config_dir: Path
    state_dir: Path
    aws: AwsSettings = AwsSettings()

    def resolve(self, path: str) -> Path:
        """A path from a config file, relative to the config's folder unless absolute."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.config_dir / p
