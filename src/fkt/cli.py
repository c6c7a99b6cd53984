"""The `fkt` command. User mistakes end in one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import textwrap
import errno
import json
import sys
from pathlib import Path

from fkt.errors import UserError
from fkt.presets import find_preset, preset_names

EXIT_FAILED = 1  # tasks of a launch failed (their logs say why); the others' results are kept
EXIT_USER = 2
EXIT_NONFINITE = 3
EXIT_IO = 4
EXIT_INTERRUPTED = 130
# Errors of the machine rather than of fkt: a full disk, a read-only or forbidden folder.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class Formatter(argparse.HelpFormatter):
    """argparse's layout, but lines never break inside a hyphenated name (`paper-intel-image-tuned`)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(EXIT_USER, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def field_help(dest: str, const: object = None) -> str:
    """A flag's help: its config field's `description=` and the field it sets, so that `--help` and
    the configuration reference (generated from the same descriptions) cannot disagree."""
    from fkt.config import field_description

    shown = {True: "true", False: "false"}.get(const, const) if isinstance(const, bool) else const
    where = dest if const is None else f"sets {dest}={shown}"
    return f"{field_description(dest)} [{where}]".replace("%", "%%")  # argparse %-formats help


# A value flag's placeholder in --help, by its type (the field's name in capitals otherwise).
def epochs_value(text: str) -> int | float:
    """An epoch count as written: 3 stays an int, 1.5 ends mid-epoch."""
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


METAVARS = {int: "N", float: "X", Path: "PATH", epochs_value: "N"}


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags that map onto config fields (None = keep the file's or the default value), grouped by
    config section; each one's help is its field's description (see field_help)."""
    from typing import get_args

    from fkt.config import CompileMode, Config, Fusion, PseudoLabel, SSLObjective

    p.add_argument("--config", "--preset", dest="config", metavar="NAME|FILE",
                   help=f"a preset by name ({', '.join(preset_names())}) or a YAML file of your own")
    groups: dict[str, argparse._ArgumentGroup] = {}

    def flag(*names: str, dest: str, **kwargs) -> None:
        section = dest.split(".")[0] if "." in dest else None
        if section is not None and section not in groups:
            groups[section] = p.add_argument_group(
                f"{section} (--set {section}.FIELD=VALUE for the rest)", Config.model_fields[section].description)
        if "help" not in kwargs:
            kwargs["help"] = field_help(dest, kwargs.get("const"))
        if "choices" not in kwargs and "action" not in kwargs:
            kwargs.setdefault("metavar", METAVARS.get(kwargs.get("type"), dest.split(".")[-1].upper()))
        (groups[section] if section else p).add_argument(*names, dest=dest, **kwargs)

    flag("--seed", dest="seed", type=int)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, e.g. --set optim.supervised.lr=0.1 (see the configuration reference)")
    flag("--method", dest="method.name", choices=["supervised", "representational", "functional"])
    flag("--ssl", dest="method.ssl", choices=list(get_args(SSLObjective)))
    flag("--fusion", dest="method.fusion", choices=list(get_args(Fusion)))
    flag("--lambda", dest="method.lambda_ce", type=float)
    flag("--temperature", dest="method.temperature", type=float)
    flag("--classifier-input", dest="method.classifier_input", choices=["clean", "weak", "view"])
    flag("--finetune", dest="method.finetune", choices=["full", "linear"])
    flag("--pseudo-label", dest="method.pseudo_label", choices=list(get_args(PseudoLabel)))
    flag("--pl-threshold", dest="method.pl_threshold", type=float)
    flag("--ema-decay", dest="method.ema_decay", type=float)
    flag("--dataset", dest="data.dataset", metavar="NAME")
    flag("--data-root", dest="data.root", type=Path)
    flag("--image-size", dest="data.image_size", type=int)
    flag("--limit-train", dest="data.limit_train", type=int)
    flag("--batch-size", dest="data.batch_size", type=int)
    flag("--num-workers", dest="data.num_workers", type=int)
    flag("--labels-per-class", dest="data.labels_per_class", type=int)
    flag("--labelled-fraction", dest="data.labelled_fraction", type=float)
    flag("--unlabelled-root", dest="data.unlabelled_root", type=Path)
    flag("--labelled-batch-size", dest="data.labelled_batch_size", type=int)
    flag("--pool-batch-ratio", dest="data.pool_batch_ratio", type=float)
    flag("--skip-bad-images", dest="data.skip_bad_images", action="store_const", const=True)
    flag("--no-cache", dest="data.cache", action="store_const", const=False)
    flag("--backbone", dest="model.backbone", metavar="NAME")
    flag("--stem", dest="model.stem", choices=["imagenet", "small"])
    flag("--pretrained-weights", dest="model.pretrained_weights", type=Path)
    flag("--epochs", dest="trainer.epochs", type=epochs_value)
    flag("--pretrain-epochs", dest="trainer.pretrain_epochs", type=epochs_value)
    flag("--accelerator", dest="trainer.accelerator", metavar="NAME")
    flag("--devices", dest="trainer.devices", metavar="N|auto")
    flag("--num-nodes", dest="trainer.num_nodes", type=int)
    flag("--strategy", dest="trainer.strategy", metavar="NAME")
    flag("--precision", dest="trainer.precision", metavar="NAME")
    flag("--sync-batchnorm", dest="trainer.sync_batchnorm", action="store_const", const=True)
    flag("--compile", dest="trainer.compile", action="store_const", const=True)
    flag("--compile-mode", dest="trainer.compile_mode", choices=list(get_args(CompileMode)))
    flag("--checkpoint-every-n-steps", dest="trainer.checkpoint_every_n_steps", type=int)
    flag("--no-progress", dest="trainer.progress_bar", action="store_const", const=False)


def config_from_args(args: argparse.Namespace):
    from fkt.config import resolve

    overrides = {k: v for k, v in vars(args).items() if "." in k or k == "seed"}
    devices = overrides.get("trainer.devices")
    if isinstance(devices, str) and devices.isdigit():
        overrides["trainer.devices"] = int(devices)
    path = find_preset(args.config) if args.config else None
    return resolve(path, overrides, args.sets)


def cmd_train(args: argparse.Namespace) -> int:
    from fkt.engine import train

    config = config_from_args(args)
    if args.out is not None:
        config.out = args.out
    results = train(config, resume=args.resume, trust=args.trust_checkpoint)
    if results:
        print(summary_line(results))
        print(f"wrote {Path(config.out) / 'metrics.json'}")
    return 0


def summary_line(results: dict) -> str:
    test, compute = results["test"], results["compute"]
    return (f"{results['method']} on {results['dataset']} (seed {results['seed']}): "
            f"test accuracy {100 * test['accuracy']:.2f}%, macro F1 {100 * test['f1_macro']:.2f}%, "
            f"{compute['image_passes']:,} image passes, {compute['train_seconds']:.0f} s")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fkt.evaluate import evaluate_checkpoint

    results = evaluate_checkpoint(args.checkpoint, args.dataset, args.data_root, args.out,
                                  probes=args.probe, corruptions=args.corruptions, trust=args.trust_checkpoint,
                                  skip_bad_images=args.skip_bad_images)
    shown = {k: v for k, v in results.items() if k not in ("per_class", "confusion_matrix")}
    if "test" in results:
        shown["test"] = {k: v for k, v in results["test"].items() if k not in ("per_class", "confusion_matrix")}
    print(json.dumps(shown, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from fkt.predict import predict_command

    return predict_command(args)


def cmd_export(args: argparse.Namespace) -> int:
    from fkt.export import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.format, args.out, args.data_root, trust=args.trust_checkpoint)
    print(f"wrote {path} and {path.parent / 'model.json'}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from fkt.data import DATASETS
    from fkt.data.fashion_mnist import locate

    for name, info in DATASETS.items():
        if name == "fashion-mnist":
            found = locate(None)
            where = f"found at {found}" if found else "not installed (apt-get install dataset-fashion-mnist)"
        else:
            where = "needs --data-root"
        print(f"{name:14} {info.image_size:4d}px  {info.layout}; {where}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from fkt.reproduce import run_grid

    config = config_from_args(args)
    if args.seeds is not None:
        config.grid.seeds = list(range(args.seeds))
    if args.methods:
        config.grid.methods = args.methods.split(",")
    print(run_grid(config, args.out, launcher_from_args(args), dry_run=args.dry_run))
    return 0


def launcher_from_args(args: argparse.Namespace):
    from fkt.launch import launcher_from_args as build

    return build(args)


def cmd_report(args: argparse.Namespace) -> int:
    from fkt.report.collect import report_command

    return report_command(args)


def cmd_tune(args: argparse.Namespace) -> int:
    from fkt.tune import tune_command

    return tune_command(config_from_args(args), args, launcher_from_args(args))


def cmd_cam(args: argparse.Namespace) -> int:
    from fkt.report.gradcam import cam_from_checkpoints

    path = cam_from_checkpoints(args.checkpoint, args.dataset, args.data_root, args.images, args.out,
                                trust=args.trust_checkpoint, skip_bad_images=args.skip_bad_images)
    print(f"wrote {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from fkt.bench import run_bench

    return run_bench(args)


def add_skip_bad_images_flag(p: argparse.ArgumentParser) -> None:
    """For commands that read a checkpoint's data again: a file that went bad since training need not stop them."""
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave unreadable image files out instead of stopping, as fkt train --skip-bad-images does")


def add_trust_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle checkpoints in full (runs any code they hold): only for files you trust")


def build_parser() -> Parser:
    from typing import get_args

    from fkt import __version__
    from fkt.config import CompileMode, SSLObjective
    from fkt.launch import add_arguments as add_launcher_arguments
    from fkt.report.collect import add_arguments as add_report_arguments
    from fkt.tune import add_arguments as add_tune_arguments

    parser = Parser(prog="fkt", description="Functional knowledge transfer: train, compare, evaluate.")
    parser.add_argument("--version", action="version", version=f"fkt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    train = sub.add_parser("train", help="train one method on one dataset")
    add_run_flags(train)
    train.add_argument("--out", type=Path, required=True,
                       help="run directory; rerunning on the same one resumes from its last checkpoint")
    train.add_argument("--resume", action="store_true",
                       help="insist on resuming: an error if --out holds no checkpoint")
    add_trust_flag(train)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="test metrics of a checkpoint; probes of its backbone; corruptions")
    evaluate.add_argument("--checkpoint", type=Path, required=True)
    evaluate.add_argument("--dataset")
    evaluate.add_argument("--data-root", type=Path)
    evaluate.add_argument("--out", type=Path, help="folder for eval.json")
    evaluate.add_argument("--probe", action="append", choices=["knn", "linear"], default=[],
                          help="also probe the frozen backbone: k-NN (k=20, cosine) or a linear probe; repeatable")
    evaluate.add_argument("--corruptions", action="store_true",
                          help="also test accuracy under common corruptions (7 kinds x 5 severities)")
    add_skip_bad_images_flag(evaluate)
    add_trust_flag(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="classify image files, folders or globs with a checkpoint")
    predict.add_argument("--checkpoint", type=Path, required=True)
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or globs")
    predict.add_argument("--out", type=Path, help="file to write (default: standard output)")
    predict.add_argument("--format", choices=["csv", "json"], default="csv")
    predict.add_argument("--top-k", type=int, default=3, help="classes listed per image, best first")
    predict.add_argument("--batch-size", type=int, default=64)
    predict.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    predict.add_argument("--no-progress", dest="progress", action="store_false")
    add_trust_flag(predict)
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help="the classifier as TorchScript or ONNX, checked against the checkpoint")
    export.add_argument("--checkpoint", type=Path, required=True)
    export.add_argument("--format", choices=["torchscript", "onnx"], required=True)
    export.add_argument("--out", type=Path, required=True, help="folder for the model file and model.json")
    export.add_argument("--data-root", type=Path, help="where the checkpoint's data is, for the check on test images")
    add_trust_flag(export)
    export.set_defaults(func=cmd_export)

    datasets = sub.add_parser("datasets", help="which datasets are available here, and where from")
    datasets.set_defaults(func=cmd_datasets)

    cam = sub.add_parser("cam", help="Grad-CAM grid: the same test images through each checkpoint")
    cam.add_argument("--checkpoint", type=Path, action="append", required=True,
                     help="repeat for one column per checkpoint")
    cam.add_argument("--dataset")
    cam.add_argument("--data-root", type=Path)
    cam.add_argument("--images", type=int, default=8)
    cam.add_argument("--out", type=Path, required=True, help="PNG file to write")
    add_skip_bad_images_flag(cam)
    add_trust_flag(cam)
    cam.set_defaults(func=cmd_cam)

    reproduce = sub.add_parser("reproduce", help="run a preset's grid of methods x seeds and tabulate",
                               description=f"Presets: {', '.join(preset_names())}.")
    add_run_flags(reproduce)
    reproduce.add_argument("--seeds", type=int, help="seeds 0..N-1 (default: the preset's)")
    reproduce.add_argument("--methods", help="comma-separated subset of the preset's methods")
    reproduce.add_argument("--out", type=Path, required=True)
    add_launcher_arguments(reproduce)
    reproduce.set_defaults(func=cmd_reproduce)

    report = sub.add_parser("report", help="one report (tables, paired tests, figures) from the run folders of "
                                           "one or more grids")
    add_report_arguments(report)
    report.set_defaults(func=cmd_report)

    tune = sub.add_parser("tune", help="tune one arm's settings with Optuna on the validation split")
    add_run_flags(tune)
    add_tune_arguments(tune)
    add_launcher_arguments(tune)
    tune.set_defaults(func=cmd_tune)

    bench = sub.add_parser("bench", help="steady-state training throughput of each method, against bare PyTorch")
    bench.add_argument("--methods", default="supervised,simclr,functional-clean,functional-view,fixmatch,functional-fixmatch",
                       help="comma-separated: supervised, simclr, functional-clean, functional-view, fixmatch, "
                            "functional-fixmatch (the last two on joint batches: the pool and half as many labelled)")
    bench.add_argument("--ssl", default="simclr", choices=list(get_args(SSLObjective)),
                       help="the SSL objective of the simclr (SSL pretraining) and functional steps")
    bench.add_argument("--backbone", default="resnet18")
    bench.add_argument("--stem", default="small", choices=["imagenet", "small"])
    bench.add_argument("--image-size", type=int, default=32)
    bench.add_argument("--batch-size", type=int, default=128)
    bench.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    bench.add_argument("--precision", default="32-true", help="32-true, bf16-mixed or 16-mixed")
    bench.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    bench.add_argument("--compile-mode", choices=list(get_args(CompileMode)),
                       help="torch.compile's mode (implies --compile; reduce-overhead: CUDA graphs)")
    bench.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    bench.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--out", type=Path, help="JSON file to write (default: print only)")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fkt.checkpointing import Interrupted
    from fkt.launch import LaunchFailed
    from fkt.objectives import NonFiniteLoss

    try:
        return args.func(args)
    except UserError as err:
        print(f"fkt: error: {err}", file=sys.stderr)
        return EXIT_USER
    except LaunchFailed as err:
        print(f"fkt: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except NonFiniteLoss as err:
        print(f"fkt: error: training stopped: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    except Interrupted as err:
        print(f"fkt: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("fkt: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:
        if err.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"fkt: error: {where}{err.strerror}; files written before are intact", file=sys.stderr)
        return EXIT_IO


if __name__ == "__main__":
    sys.exit(main())
