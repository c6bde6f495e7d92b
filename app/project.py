"""A project on disk: `rankloop.toml`, `rankloop.db`, `rounds/N/{reward,policy}/`, `logs/`.

`Project.find()` locates the project as git finds its repository: the given folder, else the
current directory or its nearest parent holding `rankloop.toml`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rankloop.data.store import Store

from .config import ModelsConfig, ProjectConfig

CONFIG_FILE = "rankloop.toml"
DB_FILE = "rankloop.db"


class ProjectError(RuntimeError):
    """A missing or broken project; the message says what to do."""


@dataclass
class Project:
    root: Path
    config: ProjectConfig
    store: Store

    @classmethod
    def init(
        cls, root: str | Path, policy: str | None = None, reward_model: str | None = None
    ) -> Project:
        """Create a project folder (refuses to overwrite an existing project)."""
        root = Path(root).resolve()
        if (root / CONFIG_FILE).exists():
            raise ProjectError(f"{root} already holds a rankloop project ({CONFIG_FILE})")
        models = ModelsConfig()
        if policy:
            models.policy = policy
        if reward_model:
            models.reward_model = reward_model
        models.validate()
        config = ProjectConfig(models=models)
        (root / "rounds").mkdir(parents=True, exist_ok=True)
        (root / "logs").mkdir(exist_ok=True)
        (root / CONFIG_FILE).write_text(config.to_toml(), encoding="utf-8")
        return cls(root, config, Store.open(root / DB_FILE))

    @classmethod
    def find(cls, start: str | Path | None = None) -> Project:
        """Open the project at `start`, or the nearest folder upwards holding rankloop.toml."""
        if start is not None:
            root = Path(start).resolve()
            if not (root / CONFIG_FILE).exists():
                raise ProjectError(
                    f"{root} is not a rankloop project (no {CONFIG_FILE}); "
                    f"create one with `rankloop init {start}`"
                )
            return cls.open(root)
        here = Path.cwd().resolve()
        for folder in (here, *here.parents):
            if (folder / CONFIG_FILE).exists():
                return cls.open(folder)
        raise ProjectError(
            f"no rankloop project here: neither {here} nor a parent holds "
            f"{CONFIG_FILE}; run `rankloop init DIR` or pass --project DIR"
        )

    @classmethod
    def open(cls, root: Path) -> Project:
        return cls(root, ProjectConfig.load(root / CONFIG_FILE), Store.open(root / DB_FILE))

    def save_config(self) -> None:
        """Write the project's settings back to rankloop.toml (every field, commented)."""
        self.config.rounds.validate()
        (self.root / CONFIG_FILE).write_text(self.config.to_toml(), encoding="utf-8")

    def round_dir(self, number: int, part: str) -> Path:
        """`rounds/N/reward` or `rounds/N/policy`. Which model belongs to round N is
        `app/rounds.py`'s to say (`start_policy`, `trained_policy`)."""
        return self.root / "rounds" / str(number) / part

    def stored(self, path: str | Path) -> str:
        """How the store keeps a model's path: relative to the project when it lies inside it,
        so a project folder moved or copied elsewhere keeps working; else as given."""
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)

    def resolve(self, stored: str) -> str:
        """A path the store kept (`stored`) as one to load from: a relative one is under the
        project; an absolute `.../rounds/N/part` that is gone (a project written before paths
        were relative, then moved) is looked up under this project; anything else (a hub id,
        a base model's folder) is returned as it is."""
        if not stored:
            return stored
        path = Path(stored)
        if not path.is_absolute():
            inside = self.root / path
            return str(inside) if inside.exists() or path.parts[:1] == ("rounds",) else stored
        parts = path.parts
        if not path.exists() and "rounds" in parts:
            i = len(parts) - 1 - parts[::-1].index("rounds")
            tail = self.root.joinpath(*parts[i:])
            if tail.exists():
                return str(tail)
        return stored

    def close(self) -> None:
        self.store.close()
