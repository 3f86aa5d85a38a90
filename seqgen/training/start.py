"""Where a training run starts, resolved once: the checkpoint it resumes or starts from (and
its config.json), what an earlier run left in out_dir, then the model and tokenizer.
`seqgen.training.workflow.run` builds a `RunStart` first and reads everything from it."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqgen import checkpoint as ckpt
from seqgen.config import ModelConfig
from seqgen.errors import CheckpointError, ConfigError
from seqgen.files import complete_swaps
from seqgen.model import GPT
from seqgen.state import size_of
from seqgen.tasks import Splits, Task
from seqgen.tokenizer import Tokenizer, load_tokenizer
from seqgen.training.trainer import BEST

if TYPE_CHECKING:
    from seqgen.training.workflow import RunConfig

log = logging.getLogger("seqgen")
FROM_SCRATCH = "none"
RUN_PARTS = ("checkpoints", "final", BEST, "logs")  # what a run writes in its out_dir


@dataclass(frozen=True)
class RunStart:
    """A run's starting point. `meta` is the config.json of the checkpoint it resumes
    (`resume_from`) or starts from (`init_from`); None from scratch. `previous` is what
    --overwrite removes once everything else is ready."""

    cfg: RunConfig
    resume_from: Path | None
    init_from: Path | None
    meta: dict[str, Any] | None
    previous: list[Path]

    @classmethod
    def resolve(cls, cfg: RunConfig) -> RunStart:
        """Check the config's starting point and read its checkpoint's metadata."""
        if cfg.init_from is None and cfg.resume is None:
            raise ConfigError(
                f"set --init_from CKPT (a checkpoint or run directory), or "
                f"--init_from {FROM_SCRATCH} to train from scratch"
            )
        out_dir = Path(cfg.out_dir)
        resume_from = resume_point(cfg.resume, out_dir)
        init_from = None if cfg.init_from in (None, FROM_SCRATCH) else ckpt.resolve(cfg.init_from)
        previous = previous_run(out_dir, init_from, resume_from, cfg.overwrite)
        path = resume_from or init_from
        meta = ckpt.read_meta(path) if path is not None else None
        start = cls(cfg, resume_from, init_from, meta, previous)
        if meta is not None:
            start.check_model_settings()
        return start

    @property
    def path(self) -> Path | None:
        return self.resume_from or self.init_from

    @property
    def block_size(self) -> int:
        """The context the task builds its examples for: the checkpoint's, or the config's."""
        return self.meta["model"]["block_size"] if self.meta else self.cfg.model.block_size

    def check_task(self, task: Task) -> None:
        """A resumed run keeps its task; a checkpoint's model reads the token state its task
        computed when it was trained."""
        if self.meta is None:
            return
        if self.resume_from is not None and self.meta["task"] != task.name:
            raise CheckpointError(
                f"{self.resume_from} was trained for task {self.meta['task']!r}, not {task.name!r}"
            )
        stored, computed = self.meta["model"].get("state_size", 0), size_of(task.token_state())
        if stored != computed:
            stored_task = type(task).from_options(self.meta.get("task_options", {}), 1)
            stored_options = stored_task.options()
            trained = {key: stored_options[key] for key in task.stored_options}
            raise ConfigError(
                f"{self.path}: its model reads a token state of size {stored}, the "
                f"{task.name} task as configured computes one of size {computed}; "
                f"set the task's data options as the checkpoint was trained ({trained})"
            )

    def check_data_settings(self, task: Task) -> None:
        """A resumed run trains on with the task's data options as given now; each that
        differs from what the run started with (a moved corpus, or a default that changed
        since) is named in a warning, as is one the run did not record (it started before
        the option existed)."""
        if self.resume_from is None:
            return
        started = (self.meta.get("run_config") or {}).get("data")
        if not isinstance(started, dict):
            return
        given = ckpt.jsonable(task.data)
        differs = [
            f"data.{key} {value!r} given, "
            + (f"{started[key]!r} when the run started" if key in started else "not recorded")
            for key, value in given.items()
            if key not in started or started[key] != value
        ]
        if differs:
            log.warning(
                "resuming %s with other data options: %s", self.resume_from, "; ".join(differs)
            )

    def check_model_settings(self) -> None:
        """A checkpoint brings its own model: model settings given that differ from it are an
        error when resuming a run trained from scratch (they made its model), and named in a
        warning otherwise."""
        cfg = self.cfg
        stored, given = ModelConfig.from_dict(self.meta["model"]), cfg.model
        if given == type(cfg)().model:  # no model settings given
            return
        skip = {"vocab_size", "state_size"} | ({"dropout"} if cfg.dropout is not None else set())
        names = [f.name for f in fields(ModelConfig) if f.name not in skip]
        differs = [
            f"model.{name} {getattr(given, name)!r} given, {getattr(stored, name)!r} in the "
            "checkpoint"
            for name in names
            if getattr(given, name) != getattr(stored, name)
        ]
        if not differs:
            return
        if self.resume_from is not None and cfg.init_from in (None, FROM_SCRATCH):
            raise ConfigError(  # the run's model came from cfg
                f"resuming {self.resume_from}: {'; '.join(differs)}; resume with the settings "
                "the run was started with"
            )
        log.warning(
            "starting from %s, which brings its own model: %s (--dropout P sets its dropout)",
            self.path,
            "; ".join(differs),
        )

    def model(self, task: Task, splits: Splits) -> tuple[GPT, Tokenizer, str]:
        """The model and tokenizer training starts from, and where they came from: a run to
        resume (Lightning restores its weights), a checkpoint, or new ones."""
        cfg, meta = self.cfg, self.meta
        if self.resume_from is not None:
            model_config = ModelConfig.from_dict(meta["model"])
            ckpt.check_weights_fit(model_config, self.resume_from)
            log.info("resuming from %s (step %s)", self.resume_from, meta.get("step"))
            return (
                GPT(model_config),
                load_tokenizer(self.resume_from),
                meta.get("init_from", str(self.resume_from)),
            )
        if self.init_from is not None:
            loaded = ckpt.load(self.init_from)
            log.info(
                "starting from %s (task %s, step %s)",
                loaded.path,
                loaded.task,
                loaded.meta.get("step"),
            )
            return loaded.model.train(), loaded.tokenizer, str(loaded.path)
        if cfg.tokenizer.path:
            tokenizer = load_tokenizer(cfg.tokenizer.path)
        else:
            tokenizer = task.build_tokenizer(splits, cfg.tokenizer)
        state_size = size_of(task.token_state())
        if cfg.model.state_logits and not state_size:
            raise ConfigError(
                f"model.state_logits: the {task.name} task as configured computes no "
                "token state for it to read (set model.state_logits false)"
            )
        model_config = ModelConfig(
            **{**asdict(cfg.model), "vocab_size": tokenizer.vocab_size, "state_size": state_size}
        )
        return GPT(model_config), tokenizer, FROM_SCRATCH


def resume_point(resume: str | None, out_dir: Path) -> Path | None:
    """The checkpoint that `resume` (None, `last` or a path) names for a run in out_dir."""
    if resume is None:
        return None
    if resume == "last":
        complete_swaps(out_dir)  # final/ is swapped in as checkpoints are
        latest = ckpt.latest_checkpoint(out_dir / "checkpoints")
        final = out_dir / "final"
        candidates = [
            p for p in (latest, final) if p is not None and (p / ckpt.CONFIG_FILE).is_file()
        ]
        if not candidates:
            raise CheckpointError(f"nothing to resume in {out_dir} (no checkpoints/ or final/)")
        return max(candidates, key=lambda p: ckpt.read_meta(p).get("step", -1))
    return ckpt.resolve(resume)


def previous_run(
    out_dir: Path, init_from: Path | None, resume_from: Path | None, overwrite: bool
) -> list[Path]:
    """What an earlier run left in out_dir, to remove with --overwrite (checked before any
    work: a new run never mixes with an old one's checkpoints, nor replaces its source)."""
    if init_from is not None and out_dir.resolve() in (
        init_from.resolve(),
        *init_from.resolve().parents,
    ):
        raise ConfigError(
            f"--init_from {init_from} is inside --out_dir {out_dir}: the run "
            "would replace the model it starts from; choose another --out_dir"
        )
    parts = [out_dir / name for name in RUN_PARTS]
    found = [p for p in parts if p.is_dir() and any(p.iterdir())]
    if resume_from is not None or not found:
        return []
    if not overwrite:
        names = ", ".join(f"{p.name}/" for p in found)
        raise ConfigError(
            f"{out_dir} holds a previous run ({names}): resume it with --resume "
            "last, choose another --out_dir, or give --overwrite true to delete "
            "it first"
        )
    return [p for p in parts if p.exists()]
