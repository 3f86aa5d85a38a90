"""`seqgen` command line: the commands, each built from its typed config dataclasses in the
one grammar of `seqgen.arguments`. Generation options are
`seqgen.generation.decoding.GenerationOptions`, shared by `generate` and every evaluation,
with the task's own defaults.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial

from seqgen.arguments import build, config_parser, flags_of, given, normalize, parse
from seqgen.errors import SeqgenError
from seqgen.files import check_writable


def _tasks_help(command: str) -> str:
    from seqgen.registry import available_tasks

    names = ", ".join(sorted(available_tasks()))
    return f"usage: seqgen {command} --task NAME [--help] ...\n\ntasks: {names}"


def _wants_help(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


# What differs between the two training commands: their defaults, nothing else.
RUN_DEFAULTS = {
    "pretrain": {"task": "text", "init_from": "none", "out_dir": "runs/pretrain"},
    "finetune": {"out_dir": "runs/finetune"},
}


def parse_run(command: str, argv: Sequence[str]):
    """(RunConfig, report path) from `seqgen pretrain|finetune` arguments: the run's keys,
    the task's `data.*` keys and --report; None when only the list of tasks was asked for."""
    from seqgen.registry import task_class
    from seqgen.training.start import FROM_SCRATCH
    from seqgen.training.workflow import RunConfig

    argv = normalize(argv, flags_of(RunConfig))
    defaults = RUN_DEFAULTS[command]
    name = given(argv, "task") or defaults.get("task")
    if name is None:
        if _wants_help(argv):
            print(_tasks_help(command))
            return None
        raise SeqgenError(
            "set the task: --task NAME (or `task:` in the config)\n" + _tasks_help(command)
        )
    task = task_class(name)
    parser = config_parser(f"seqgen {command}", RunConfig.__doc__, RunConfig, skip={"data"})
    parser.add_class_arguments(task.data_config, nested_key="data")
    parser.add_argument(
        "--report",
        type=str | None,
        default=None,
        help="Write a JSON report (val_loss, tokens_per_second, ...).",
    )
    parser.set_defaults({**defaults, "task": name})
    values = parse(parser, argv)
    cfg = build(RunConfig, values)
    try:
        check_writable(values["report"], "--report")
    except ValueError as err:
        raise SeqgenError(str(err)) from None
    if command == "pretrain" and cfg.init_from not in (None, FROM_SCRATCH):  # flag or config
        raise SeqgenError(
            f"seqgen pretrain trains from scratch (init_from: {cfg.init_from}); to start from "
            "a checkpoint use seqgen finetune --init_from CKPT"
        )
    return cfg, values["report"]


def cmd_train(command: str, argv: Sequence[str]) -> int:
    from seqgen.tables import key_value_table
    from seqgen.training.workflow import run

    run_config = parse_run(command, argv)
    if run_config is None:
        return 0
    cfg, report_path = run_config
    print("\n" + key_value_table(command, run(cfg, report_path)))
    return 0


def _task_for(argv: Sequence[str]):
    """The task that --task names, or else the task of --ckpt's checkpoint, as an object
    (configured as the checkpoint was), or None when neither is given. Help after a
    checkpoint that cannot be read is the general help."""
    from seqgen.registry import task_class

    name, ckpt = given(argv, "task"), given(argv, "ckpt")
    if ckpt is not None:
        from seqgen.inference import task_of

        try:
            task = task_of(ckpt)
        except SeqgenError:
            if not _wants_help(argv):
                raise
            task = None
        if task is not None and (name is None or name == task.name):
            return task
    return None if name is None else task_class(name)()


def _generation_defaults(parser, task, config_class: type) -> None:
    """The task's generation defaults as the parser's, for the fields the command has."""
    from seqgen.tasks import known_options

    parser.set_defaults(known_options(config_class, task.decoding_defaults()))


def cmd_evaluate(argv: Sequence[str]) -> int:
    from seqgen.tasks import Evaluates

    task = _task_for(argv)
    if task is None:
        if _wants_help(argv):
            print(_tasks_help("evaluate"))
            return 0
        raise SeqgenError("set the task: --task NAME (or --ckpt CKPT)\n" + _tasks_help("evaluate"))
    if not isinstance(task, Evaluates):
        raise SeqgenError(f"the {task.name} task has no evaluation")
    config_class = task.eval_config
    argv = normalize(argv, flags_of(config_class))
    parser = config_parser(
        f"seqgen evaluate --task {task.name}", config_class.__doc__, config_class
    )
    parser.add_argument(
        "--task", type=str | None, default=None, help="The task (default: the checkpoint's)."
    )
    _generation_defaults(parser, task, config_class)
    task.evaluate(build(config_class, parse(parser, argv)))
    return 0


def cmd_generate(argv: Sequence[str]) -> int:
    from seqgen.commands.generate import GenerateConfig, run
    from seqgen.tasks import GeneratesFiles

    task = _task_for(argv)
    classes: list[type] = [GenerateConfig]
    if isinstance(task, GeneratesFiles):
        classes.append(task.generate_options)
    argv = normalize(argv, flags_of(*classes))
    shown = f" --task {task.name}" if task is not None and _wants_help(argv) else ""
    parser = config_parser(f"seqgen generate{shown}", GenerateConfig.__doc__, *classes)
    if task is not None:
        _generation_defaults(parser, task, GenerateConfig)
    values = parse(parser, argv)
    configs = [build(config_class, values) for config_class in classes]
    run(configs[0], configs[1] if len(configs) > 1 else None)
    return 0


def cmd_data(argv: Sequence[str]) -> int:
    from seqgen.registry import data_builders

    if argv and argv[0] == "get":
        return _data_get(argv[1:])
    builders = data_builders()
    if not argv or argv[0] not in builders:
        names = ", ".join(["get", *builders])
        print(f"usage: seqgen data BUILDER [--help] ...\n\nbuilders: {names}")
        if argv and argv[0] not in ("-h", "--help"):
            raise SeqgenError(f"unknown data builder {argv[0]!r}")
        return 0
    builder = builders[argv[0]]
    builder.build(parsed(f"data {argv[0]}", builder.config, argv[1:]))
    return 0


def _data_get(argv: Sequence[str]) -> int:
    from seqgen.download import GetConfig, describe, run
    from seqgen.registry import remote_datasets

    catalog = remote_datasets()
    if not argv:
        print(f"usage: seqgen data get NAME [--out DIR] [--help]\n\n{describe(catalog)}")
        return 0
    if not argv[0].startswith("-"):  # the name as a positional: seqgen data get NAME
        argv = ["--name", *argv]
    run(parsed("data get", GetConfig, argv), catalog)
    return 0


def cmd_tokenizer(argv: Sequence[str]) -> int:
    from seqgen.commands.tokenizer import TokenizerTrainConfig, run
    from seqgen.registry import task_class

    usage = "usage: seqgen tokenizer train [--help] [--task NAME] --data.source PATH --out DIR"
    if not argv or argv[0] not in ("train", "-h", "--help"):
        raise SeqgenError(usage)
    if argv[0] != "train":
        print(usage)
        return 0
    argv = normalize(argv[1:], flags_of(TokenizerTrainConfig))
    name = given(argv, "task") or TokenizerTrainConfig.task
    parser = config_parser(
        "seqgen tokenizer train", TokenizerTrainConfig.__doc__, TokenizerTrainConfig, skip={"data"}
    )
    parser.add_class_arguments(task_class(name).data_config, nested_key="data")
    cfg = build(TokenizerTrainConfig, parse(parser, argv))
    tokenizer = run(cfg)
    print(f"wrote {cfg.out} ({tokenizer.vocab_size} tokens)")
    return 0


def parsed(command: str, config_class: type, argv: Sequence[str]):
    """The config of a command that takes one config class: `config_class` from `argv`."""
    parser = config_parser(f"seqgen {command}", config_class.__doc__, config_class)
    return build(config_class, parse(parser, normalize(argv, flags_of(config_class))))


def cmd_info(argv: Sequence[str]) -> int:
    from seqgen.commands.info import InfoConfig, run

    run(parsed("info", InfoConfig, argv))
    return 0


def cmd_plot(argv: Sequence[str]) -> int:
    from seqgen.commands.plot import PlotConfig, plot

    config = parsed("plot", PlotConfig, argv)
    print(f"wrote {config.out} ({', '.join(plot(config))} of {len(config.run)} run(s))")
    return 0


def cmd_attention(argv: Sequence[str]) -> int:
    from seqgen.commands.attention_maps import AttentionConfig, draw

    config = parsed("attention", AttentionConfig, argv)
    try:
        drawn = draw(config)
    except ValueError as err:
        raise SeqgenError(str(err)) from None
    layers = sorted({layer for layer, _ in drawn})
    heads = sorted({head for _, head in drawn})
    print(f"wrote {config.out} ({_spans('layer', layers)}, {_spans('head', heads)})")
    return 0


def _spans(name: str, values: list[int]) -> str:
    if len(values) == 1:
        return f"{name} {values[0]}"
    return f"{name}s {values[0]}-{values[-1]}"


def cmd_serve(argv: Sequence[str]) -> int:
    from seqgen.serve.config import ServeConfig

    config = parsed("serve", ServeConfig, argv)
    try:
        from seqgen.serve.server import serve
    except ImportError as err:
        raise SeqgenError(
            "seqgen serve needs FastAPI, uvicorn and prometheus-client: pip "
            f"install 'seqgen[serve]' ({err})"
        ) from None
    serve(config)
    return 0


def _quiet_transformers() -> None:
    """transformers' own bars and notices (shards written, weights loaded) say nothing here."""
    from seqgen.interop.hf_checkpoint import require_transformers

    transformers = require_transformers()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def cmd_export(argv: Sequence[str]) -> int:
    from seqgen.interop.hf_checkpoint import ExportConfig, export_hf

    config = parsed("export", ExportConfig, argv)
    _quiet_transformers()
    files = export_hf(config)
    print(f"wrote {config.out} ({', '.join(files)})")
    return 0


def cmd_import(argv: Sequence[str]) -> int:
    from seqgen.interop.hf_checkpoint import ImportConfig, import_hf

    config = parsed("import", ImportConfig, argv)
    _quiet_transformers()
    print(f"wrote {import_hf(config)}")
    return 0


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "pretrain": (
        partial(cmd_train, "pretrain"),
        "train from scratch: a text LM, or a task's corpus (--task music)",
    ),
    "finetune": (
        partial(cmd_train, "finetune"),
        "fine-tune a checkpoint on a task, or train one from scratch",
    ),
    "evaluate": (cmd_evaluate, "score a checkpoint or a system's outputs on a task"),
    "generate": (cmd_generate, "sample from a checkpoint"),
    "data": (cmd_data, "tokenize a corpus into shards, or build a dataset (seqgen data prepare)"),
    "info": (cmd_info, "what a checkpoint is: task, step, tokenizer, model, parameters"),
    "plot": (cmd_plot, "loss curves of one or several runs (seqgen plot --run A --run B)"),
    "attention": (cmd_attention, "attention heat maps of a checkpoint on a prompt"),
    "serve": (cmd_serve, "serve a checkpoint over HTTP, with a page to try it (--port 8000)"),
    "export": (cmd_export, "write a checkpoint as a Hugging Face model folder (--format hf)"),
    "import": (cmd_import, "turn a Hugging Face GPT-2 folder into a checkpoint (--hf DIR)"),
    "tokenizer": (cmd_tokenizer, "train a SentencePiece tokenizer (seqgen tokenizer train)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        from seqgen import __version__

        print(f"seqgen {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = "\n".join(f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items())
        print(f"usage: seqgen <command> [--help] ... | seqgen --version\n\ncommands:\n{lines}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    logging.basicConfig(level=os.environ.get("SEQGEN_LOG", "INFO"), format="%(message)s")
    command, _ = COMMANDS[argv[0]]
    try:
        return command(argv[1:])
    except SeqgenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `seqgen ... | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
