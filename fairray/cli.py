"""The ``fairray`` command line. Every error becomes one line and a non-zero exit (``--debug`` for tracebacks)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from fairray.errors import ConfigError, FairrayError
from fairray.tracking import shown_uri

DEFAULT_STORAGE = "fairray_runs"

_MAIN_HELP = """\
fairray — fairness-utility sweeps for speech emotion recognition (Ray Tune + Optuna + MLflow).

typical session (embedded default: local Ray, local MLflow store, built-in en/de/pl data):
  fairray sweep search_spaces/minmaxgap.yaml          # Optuna multi-objective search, one MLflow run per trial
  fairray frontier minmaxgap --by language            # Pareto fronts per language, from MLflow
  fairray frontier minmaxgap --plot fronts.html       # the same as an interactive page
  fairray export minmaxgap --out pareto/              # Pareto-optimal checkpoints + model cards
  fairray predict pareto/<trial> --split test --out preds.csv
  fairray evaluate preds.csv --group gender --stratum language
  fairray ui                                          # browse every trial in the MLflow UI

IDI (inferred groups, group-robust methods; see search_spaces/idi.yaml):
  fairray sweep search_spaces/idi.yaml                # method x group source x K, conditional space
  fairray sweep search_spaces/idi.yaml --ablation table1
  fairray report search_spaces/idi.yaml --ablation table1 --out report/   # IDI Table 1 with CIs
  fairray frontier idi --noise                        # CIs of the front; ~ where gaps tie within noise
"""


def _tracking_default() -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(DEFAULT_STORAGE).resolve() / 'mlflow.db'}"


def _resolve_sweep_target(target: str, tracking_uri: str | None) -> tuple[str, str]:
    """SWEEP may be an experiment name or a spec file (whose name/tracking settings are then used).

    Read-only commands never create a store: a local SQLite URI must point at an existing file.
    """
    if target.endswith((".yaml", ".yml")):
        from fairray.config import load_spec
        from fairray.sweep import tracking_uri as spec_uri

        spec = load_spec(target).spec
        experiment, uri = spec.experiment, tracking_uri or spec_uri(spec)
    else:
        experiment, uri = target, tracking_uri or _tracking_default()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        from fairray.errors import TrackingError

        raise TrackingError(f"no MLflow store at {shown_uri(uri)} for sweep {experiment!r}; run `fairray sweep SPEC` first, "
                            "or pass --tracking-uri (or the spec file) of the store that has it")
    return experiment, uri


def _parse_objectives(text: str | None):
    if not text:
        return None
    from fairray.frontier.pareto import Direction
    from fairray.metrics import validate_metric_name

    out = []
    for item in text.split(","):
        metric, _, direction = item.strip().rpartition(":")
        if not metric or direction.lower() not in ("max", "min", "maximize", "minimize"):
            raise ConfigError(f"--objectives {item!r}: expected METRIC:max or METRIC:min, "
                              "e.g. dev/weighted_f1:max,dev/tpr_gap/gender/worst:language:min")
        try:
            validate_metric_name(metric)
        except ValueError as exc:
            raise ConfigError(f"--objectives: {exc}") from None
        out.append((metric, Direction.parse(direction)))
    return out


# ---------------------------------------------------------------- commands
def cmd_sweep(args: argparse.Namespace) -> int:
    from fairray.config import load_spec
    from fairray.sweep import run_sweep

    overrides = list(args.set)
    if args.num_samples is not None:
        overrides.append(f"budget.num_samples={args.num_samples}")
    loaded = load_spec(args.spec, overrides)
    outcome = run_sweep(loaded, address=args.address, resume=args.resume, verbose=0 if args.quiet else 1,
                        ablation=args.ablation)
    pruned = f", {outcome.n_pruned} pruned" if outcome.n_pruned else ""
    repeats = "" if outcome.n_duplicates is None else \
        f", {outcome.n_duplicates} duplicate samples (told, not trained)"
    exhausted = "; the search space ran out of new configurations" if outcome.exhausted else ""
    print(f"\nsweep {loaded.spec.name!r}: {outcome.n_finished} trials finished{pruned}, {outcome.n_errored} errored"
          f"{repeats}, in {outcome.wall_s:.0f} s{exhausted}; MLflow {shown_uri(outcome.tracking_uri)} run {outcome.sweep_run_id}")
    from fairray.frontier.query import fronts, load_sweep

    sweep = load_sweep(outcome.tracking_uri, outcome.experiment, outcome.sweep_run_id)
    if sweep.trials:
        print(_format_fronts(sweep, fronts(sweep), "table", show_all=False))
    from fairray.dashboard import annotate_sweep

    # the runs' descriptions in MLflow's UI: the front's summary on the sweep's run, each trial's place on it
    annotate_sweep(outcome.tracking_uri, outcome.experiment, outcome.sweep_run_id, ablation=args.ablation)
    more = f" --ablation {args.ablation}" if args.ablation else ""
    if outcome.interrupted:
        print(f"interrupted: continue with `fairray sweep {args.spec}{more} --resume`", file=sys.stderr)
        return 130
    print(f"next: fairray frontier {args.spec}{more} --by language   |   "
          f"fairray export {args.spec}{more} --out pareto/")
    return 0 if outcome.n_finished else 1


def cmd_submit(args: argparse.Namespace) -> int:
    from fairray.sweep.submit import follow, submit

    job = submit(args.spec, args.address, args.set, working_dir=args.working_dir, num_samples=args.num_samples,
                 ablation=args.ablation, resume=args.resume, quiet=args.quiet)
    print(f"submitted job {job.job_id} to {job.address}: {job.entrypoint}  (working dir {job.working_dir})",
          file=sys.stderr)
    if not args.follow:
        print(f"follow it: ray job logs {job.job_id} --address {job.address} --follow   |   "
              f"stop it: ray job stop {job.job_id} --address {job.address}")
        return 0
    return follow(job)


def cmd_train(args: argparse.Namespace) -> int:
    import tempfile

    import torch
    from tqdm import tqdm

    from fairray.config import load_spec
    from fairray.sweep import prepare_data, storage_root, tracking_uri
    from fairray.sweep.runner import require_local_gpus, warn_thin_dev_cells
    from fairray.tracking import ensure_experiment
    from fairray.train import LocalSession, TrialTracking, run_trial

    loaded = load_spec(args.spec, args.set)
    spec = loaded.spec
    require_local_gpus(spec, loaded.source)
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    data = prepare_data(spec)
    warn_thin_dev_cells([data], spec.train.s_min)
    tracking = None
    if not args.no_mlflow:
        uri = tracking_uri(spec)
        tracking = TrialTracking(uri, ensure_experiment(uri, spec.experiment, storage_root(spec)), None,
                                 f"train-{os.getpid()}-{int(time.time())}", spec.name)
    bar = tqdm(total=spec.train.epochs, desc=f"{spec.method.name}", unit="epoch", disable=args.quiet)
    keys = [o.metric for o in spec.search.objectives] or ["dev/weighted_f1"]

    def on_epoch(m: dict) -> None:
        bar.update(1)
        bar.set_postfix({k.split("/", 1)[1][:18]: f"{m[k]:.3f}" for k in keys if k in m})

    with tempfile.TemporaryDirectory(prefix="fairray-train-") as d:
        final = run_trial(loaded.raw, {}, data, LocalSession(d), tracking, on_epoch=on_epoch)
    bar.close()
    from fairray.metrics import MetricKey

    def shown_key(k: str) -> bool:
        try:
            overall = MetricKey.parse(k).scope == "overall"
        except ValueError:  # selected_epoch, final, groups/...: bookkeeping, not metrics
            return k == "selected_epoch"
        return overall or k in keys or k.replace("test/", "dev/", 1) in keys

    shown = {k: v for k, v in final.items() if shown_key(k)}
    print(json.dumps({k: round(v, 4) for k, v in sorted(shown.items())}, indent=1))
    if tracking:
        print(f"MLflow: {shown_uri(tracking.uri)} experiment {spec.experiment!r} run {tracking.trial_id}")
    return 0


def _plugin_listing(args: argparse.Namespace, registry, section: str, describe) -> int:
    """``fairray methods`` / ``models``: each registered plugin, a line about it, its typed parameters."""
    import dataclasses

    rows = []
    for name in registry:
        cls = registry.get(name)
        params = [{"name": f.name, "type": str(f.type),
                   "default": f.default if f.default is not dataclasses.MISSING else "(required)"}
                  for f in dataclasses.fields(cls.Params)]
        rows.append({"name": name, "summary": cls.summary, **describe(cls), "params": params})
    if args.format == "json":
        print(json.dumps(rows, indent=1, default=str))
        return 0
    width = max(len(p["name"]) for r in rows for p in r["params"])
    for r in rows:
        extra = (f"needs: {r['needs']}; default sampler: {r['sampler']}" if "needs" in r
                 else f"accepts: {', '.join(r['accepts'])} inputs")
        print(f"{r['name']}: {r['summary']}\n  {extra}")
        for p in r["params"]:
            print(f"    {section}.{p['name']:<{width}} {p['type']:<28} default {json.dumps(p['default'])}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from fairray.methods import METHODS

    return _plugin_listing(args, METHODS, "method", lambda cls: {"needs": cls.requires, "sampler": cls.sampler})


def cmd_models(args: argparse.Namespace) -> int:
    from fairray.models import MODELS

    return _plugin_listing(args, MODELS, "model", lambda cls: {"accepts": list(cls.accepts)})


def _noise_text(entry: dict | None, objectives) -> str:
    """``vs <next>: Δ<gap> +0.012 [-0.020, 0.051] ~`` for the gap objectives (``~``: within noise)."""
    if not entry:
        return ""
    from fairray.metrics import MetricKey, within_noise

    ci = "; ".join(f"{MetricKey.parse(k).metric} [{iv.lo:.3f}, {iv.hi:.3f}]" for k, iv in entry["ci"].items())
    if "next" not in entry:
        return f"95% CI {ci}"
    parts = []
    for key in objectives:
        if MetricKey.parse(key).is_gap and key in entry:
            iv = entry[key]
            mark = " ~" if iv.defined and within_noise(iv) else ""
            parts.append(f"Δ{MetricKey.parse(key).metric} {iv.estimate:+.3f} [{iv.lo:+.3f}, {iv.hi:+.3f}]{mark}")
    return f"95% CI {ci}" + (f"   vs {entry['next']}: " + "; ".join(parts) if parts else "")


def _noise_json(entry: dict | None) -> dict:
    if not entry:
        return {}
    def plain(iv, name):
        return {name: None if iv.estimate != iv.estimate else iv.estimate, "lo": None if iv.lo != iv.lo else iv.lo,
                "hi": None if iv.hi != iv.hi else iv.hi}

    out = {"ci": {k: plain(iv, "value") for k, iv in entry["ci"].items()}}
    if "next" in entry:
        out["vs_next"] = {"trial_id": entry["next"], **{k: plain(iv, "difference") for k, iv in entry.items()
                                                         if k not in ("next", "ci")}}
    return out


def _front_metrics(f, budgets: dict | None) -> tuple[list, list, object]:
    """Per trial of front ``f``: its DTO and its util_at_tau (None where not computed), and the front's budget."""
    budget = (budgets or {}).get(f.title)
    dto = f.dto.tolist() if f.dto is not None else [None] * len(f.trials)
    at_tau = budget.values.tolist() if budget is not None else [None] * len(f.trials)
    return dto, at_tau, budget


def _plain(v):
    return None if v is None or v != v else v


def _format_fronts(sweep, fronts_, fmt: str, show_all: bool, noise: dict | None = None,
                   budgets: dict | None = None) -> str:
    """The fronts as a table, CSV or JSON; ``budgets`` ({front title: GapBudget}) adds util_at_tau (``--tau``)."""
    import csv
    import io

    if fmt == "json":
        out = []
        for f in fronts_:
            dto, at_tau, budget = _front_metrics(f, budgets)
            extra = {} if budget is None else {
                "tau": budget.tau, "best_at_tau": None if budget.best is None else f.trials[budget.best].trial_id}
            out.append({
                "front": f.title, "restriction": f.restriction, "objectives": list(f.objectives),
                "directions": [d.value for d in f.directions], "hypervolume": f.hypervolume,
                "reference": list(f.reference), **extra,
                "trials": [{"trial_id": t.trial_id, "run_id": t.run_id, "pareto": bool(on),
                            "values": [_plain(v) for v in vals], "dto": _plain(d),
                            **({"pruned_rung": t.pruned_rung} if t.pruned_rung is not None else {}),
                            **({"seeds": list(t.seeds), "spread": {k: list(t.spread[k]) for k in f.objectives
                                                                   if k in t.spread}} if t.seeds else {}),
                            **({"feasible": t.feasible, "violations": t.violations} if sweep.constraints else {}),
                            **({} if budget is None else {"util_at_tau": _plain(u)}), "params": t.params,
                            **_noise_json((noise or {}).get(f.title, {}).get(t.trial_id))}
                           for t, on, vals, d, u in zip(f.trials, f.on_front, f.values.tolist(), dto, at_tau,
                                                        strict=True)
                           if on or show_all]})
        return json.dumps(out, indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        params = sorted({k for t in sweep.trials for k in t.params})
        tau_column = ["util_at_tau"] if budgets else []
        w.writerow(["front", "trial_id", "run_id", "pareto", "objective", "direction", "value", "dto", *tau_column,
                    *params])
        for f in fronts_:
            dto, at_tau, _ = _front_metrics(f, budgets)
            for t, on, vals, d, u in zip(f.trials, f.on_front, f.values, dto, at_tau, strict=True):
                if on or show_all:
                    for key, direction, v in zip(f.objectives, f.directions, vals, strict=True):
                        w.writerow([f.title, t.trial_id, t.run_id, int(on), key, direction.value, v,
                                    "" if d is None else d, *(["" if u is None else u] if budgets else []),
                                    *[t.params.get(p, "") for p in params]])
        return buf.getvalue()
    from fairray.metrics import MetricKey

    n_pruned = sweep.n_pruned
    shown = sum(t.pruned_rung is not None for t in sweep.trials)
    pruned = "" if not n_pruned else f", {n_pruned} pruned by early stopping" + \
        (" (on the fronts at their rung values)" if shown else " (left out; --include-pruned adds them)")
    infeasible = sum(not t.feasible for t in sweep.trials)
    constraints = "" if not sweep.constraints else \
        f"; constraints {', '.join(map(str, sweep.constraints))}: {infeasible} infeasible trials kept off the fronts"
    out = [f"sweep {sweep.experiment!r} (MLflow run {sweep.run_id}): {len(sweep.trials) - shown} finished trials, "
           f"{sweep.n_failed} failed or unfinished{pruned}{constraints}"]
    for f in fronts_:
        dto, at_tau, budget = _front_metrics(f, budgets)
        no_dto = "" if f.dto is not None else "; no DTO: an objective lies outside [0, 1]"
        out.append(f"\nfront [{f.title}]  hypervolume {f.hypervolume:.4f}  (reference point "
                   f"{', '.join(f'{r:g}' for r in f.reference)}; {sum(f.on_front)} of {len(f.trials)} trials "
                   f"non-dominated{no_dto})")
        heads = [f"{k} ({d.value})" for k, d in zip(f.objectives, f.directions, strict=True)]
        extra_heads = (["dto"] if f.dto is not None else []) + ([f"util@tau={budget.tau:g}"] if budget else [])
        heads += [f"{h:>8}" for h in extra_heads]
        out.append("  " + "  ".join(["pareto", f"{'trial':<16}", *heads, "params"]))
        short = _short_names(sorted({k for t in sweep.trials for k in t.params}))
        order = sorted(range(len(f.trials)), key=lambda i: (not f.on_front[i], -f.values[i][0]
                       if f.directions[0].value == "max" else f.values[i][0]))
        for i in order:
            if not (f.on_front[i] or show_all):
                continue
            t = f.trials[i]
            row = [*f.values[i], *([dto[i]] if f.dto is not None else []), *([at_tau[i]] if budget else [])]
            vals = [f"{v:>{len(h)}.4f}" for v, h in zip(row, heads, strict=True)]
            params = " ".join(f"{short[k]}={_short(v)}" for k, v in sorted(t.params.items()))
            notes = ([f"[{len(t.seeds)} seeds: " + "; ".join(
                f"{MetricKey.parse(k).metric} {t.spread[k][0]:.4f}-{t.spread[k][1]:.4f}" for k in f.objectives
                if k in t.spread) + "]"] if t.seeds else []) + \
                ([f"[pruned at {t.pruned_rung} epochs]"] if t.pruned_rung is not None else []) + \
                ([f"[infeasible: {', '.join(f'{c} misses by {v:.3g}' for c, v in t.violations.items())}]"]
                 if t.violations else [])
            out.append("  " + "  ".join([f"{'*' if f.on_front[i] else ' ':^6}", f"{t.trial_id:<16}", *vals, params,
                                         *notes]))
            text = _noise_text((noise or {}).get(f.title, {}).get(t.trial_id), f.objectives)
            if text:
                out.append(" " * 26 + text)
        if budget is not None:
            if budget.best is None:
                out.append(f"  no trial has {budget.gap} <= {budget.tau:g} (util@tau = -1 for every valid trial)")
            else:
                b = budget.best
                u, g = (f.values[b][f.objectives.index(k)] for k in (budget.utility, budget.gap))
                out.append(f"  best with {budget.gap} <= {budget.tau:g}: trial {f.trials[b].trial_id} "
                           f"({budget.utility} {u:.4f}, gap {g:.4f})")
    if noise:
        out.append("\n95% CI: speaker bootstrap of the trial's logged predictions; ~ : the gap difference to the "
                   "next Pareto-optimal trial is within noise (paired speaker bootstrap, 95%)")
    return "\n".join(out)


def _short(v: str) -> str:
    try:
        return f"{float(v):.4g}"
    except ValueError:
        return v


def _short_names(paths: list[str]) -> dict[str, str]:
    """The shortest dotted suffix of each path that no other path shares (``method.name`` and
    ``dataset.groups.name`` both end in ``name``)."""
    out = {}
    for path in paths:
        parts = path.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if sum(p == suffix or p.endswith("." + suffix) for p in paths) == 1:
                break
        out[path] = suffix
    return out


def _compare_target(target: str, tracking_uri: str | None) -> tuple[str, str, str | None]:
    """``EXPERIMENT``, a spec file, or ``EXPERIMENT@RUN_ID`` -> (experiment, tracking URI, run id or None)."""
    name, _, run_id = target.partition("@")
    experiment, uri = _resolve_sweep_target(name, tracking_uri)
    return experiment, uri, run_id or None


def _format_comparison(sweeps, comparisons, fmt: str) -> str:
    """``fairray frontier --compare``: per panel, a quality table (A vs B) and the two fronts side by side."""
    if fmt == "json":
        return json.dumps([{
            "front": c.title, "objectives": list(c.fronts[0].objectives),
            "directions": [d.value for d in c.fronts[0].directions], "reference": list(c.fronts[0].reference),
            "joint_front": c.joint_front.tolist(),
            "sweeps": [{"label": label, "experiment": s.experiment, "run_id": s.run_id,
                        "hypervolume": q.hypervolume, "igd_plus": q.igd_plus, "best_dto": q.best_dto,
                        "n_front": q.n_front, "n_trials": q.n_trials,
                        "front": [{"trial_id": f.trials[i].trial_id, "values": [_plain(v) for v in f.values[i]],
                                   **({"pruned_rung": f.trials[i].pruned_rung} if f.trials[i].pruned_rung else {})}
                                  for i in _front_order(f)]}
                       for label, s, f, q in zip("AB", sweeps, c.fronts, c.quality, strict=True)]}
            for c in comparisons], indent=1)
    from fairray.metrics import MetricKey

    a, b = sweeps
    out = [f"A = {a.experiment!r} (MLflow run {a.run_id}); B = {b.experiment!r} (MLflow run {b.run_id})"]
    for c in comparisons:
        fa, fb = c.fronts
        qa, qb = c.quality
        names = list(fa.objectives)
        out.append(f"\nfront [{c.title}]  objectives: " + ", ".join(
            f"{k} ({d.value})" for k, d in zip(names, fa.directions, strict=True)))

        def num(v):
            return "n/a" if v is None else f"{v:.4f}"

        rows = [("trials", str(qa.n_trials), str(qb.n_trials)),
                ("non-dominated", str(qa.n_front), str(qb.n_front)),
                (f"hypervolume (ref {', '.join(f'{r:g}' for r in fa.reference)})", num(qa.hypervolume),
                 num(qb.hypervolume)),
                (f"IGD+ vs joint front ({len(c.joint_front)} points)", num(qa.igd_plus), num(qb.igd_plus)),
                ("best DTO", num(qa.best_dto), num(qb.best_dto))]
        width = max(len(r[0]) for r in rows)
        out.append(f"  {'':<{width}}  {'A':>10}  {'B':>10}")
        out += [f"  {label:<{width}}  {va:>10}  {vb:>10}" for label, va, vb in rows]
        short = [MetricKey.parse(k).metric for k in names]
        side = [f"{'trial':<16}", *[f"{n[:12]:>12}" for n in short]]
        out.append("\n  " + "  ".join(["A:", *side]) + "   |   " + "  ".join(["B:", *side]))
        rows_a, rows_b = _front_order(fa), _front_order(fb)
        blank = "  ".join(["  ", f"{'':<16}", *[f"{'':>12}" for _ in short]])
        for i in range(max(len(rows_a), len(rows_b))):
            cells = []
            for f, order in ((fa, rows_a), (fb, rows_b)):
                if i >= len(order):
                    cells.append(blank)
                    continue
                t = f.trials[order[i]]
                tid = t.trial_id + (f" p@{t.pruned_rung}" if t.pruned_rung else "")
                cells.append("  ".join(["  ", f"{tid:<16}", *[f"{v:>12.4f}" for v in f.values[order[i]]]]))
            out.append("  " + "   |   ".join(cells))
    return "\n".join(out)


def _front_order(f) -> list[int]:
    """The non-dominated trials of front ``f``, best first on the first objective."""
    sign = -1.0 if f.directions[0].value == "max" else 1.0
    return sorted((i for i in range(len(f.trials)) if f.on_front[i]), key=lambda i: sign * f.values[i][0])


def cmd_frontier(args: argparse.Namespace) -> int:
    from fairray.frontier.query import fronts, load_sweep

    by = [c.strip() for c in args.by.split(",")] if args.by else []
    reference = [float(x) for x in args.reference.split(",")] if args.reference else None
    if args.compare:
        if args.sweep or args.run_id or args.ablation or args.noise or args.plot or args.tau is not None:
            raise ConfigError("--compare SWEEP_A SWEEP_B takes no SWEEP, --run-id, --ablation, --noise, --plot or "
                              "--tau; name the runs as EXPERIMENT@RUN_ID")
        if args.format == "csv":
            raise ConfigError("--compare prints a table or json (--format table|json), not csv")
        from fairray.frontier.query import compare_fronts

        objectives = _parse_objectives(args.objectives)
        sweeps = [load_sweep(uri, experiment, run_id, None, args.include_pruned)
                  for experiment, uri, run_id in (_compare_target(t, args.tracking_uri) for t in args.compare)]
        panels = [fronts(s, by=by, split=args.split, objectives=objectives or sweeps[0].objectives,
                         reference=reference) for s in sweeps]
        print(_format_comparison(sweeps, compare_fronts(*panels), args.format))
        return 0
    if not args.sweep:
        raise ConfigError("frontier: name a SWEEP (experiment or spec file), or --compare SWEEP_A SWEEP_B")
    experiment, uri = _resolve_sweep_target(args.sweep, args.tracking_uri)
    sweep = load_sweep(uri, experiment, args.run_id, args.ablation, args.include_pruned)
    result = fronts(sweep, by=by, split=args.split, objectives=_parse_objectives(args.objectives),
                    reference=reference)
    noise = {}
    if args.noise:
        from fairray.frontier.query import neighbour_noise

        noise = {f.title: neighbour_noise(sweep, f, n_boot=args.n_boot) for f in result}
    budgets = None
    if args.tau is not None:
        from fairray.frontier.query import gap_budget

        budgets = {f.title: gap_budget(f, args.tau) for f in result}
    print(_format_fronts(sweep, result, args.format, args.all, noise, budgets))
    if args.plot:
        from fairray.frontier.plot import front_panel, write_frontier_html

        panels = [front_panel(f, noise.get(f.title)) for f in result]
        write_frontier_html(args.plot, panels, title=f"fairray — Pareto fronts of {experiment}",
                            subtitle=f"split {args.split}; MLflow run {sweep.run_id}; by {args.by or 'all'}")
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fairray._atomic import atomic_write_text
    from fairray.frontier.query import load_sweep
    from fairray.report import choose_layout, idi_rows, render_markdown, render_svg

    experiment, uri = _resolve_sweep_target(args.sweep, args.tracking_uri)
    sweep = load_sweep(uri, experiment, args.run_id, args.ablation)
    name = args.ablation or "search"
    layout = args.layout
    if layout == "auto":
        methods = {t.params.get("method.name") or sweep.base_params.get("method.name") for t in sweep.trials}
        layout = "regression" if sweep.base_params.get("dataset.targets") == "regression" else choose_layout(methods)

    def provenance(n_cells: int) -> str:
        return (f"MLflow run `{sweep.run_id}` at `{shown_uri(uri)}`; {len(sweep.trials)} finished trials in {n_cells} cells "
                f"({sweep.n_failed} failed or unfinished); {args.n_boot} bootstrap replicates (speakers resampled "
                "within their group x stratum), one resample shared by all rows.")

    svg = None
    if layout == "regression":
        from fairray.report.regression import regression_report, render_regression_markdown

        table, cells = regression_report(sweep, split=args.split, n_boot=args.n_boot, seed=args.seed)
        md = render_regression_markdown(table, title=(
            f"{experiment} / {name}: {args.split} regression metrics, mean over seeds [95% speaker-bootstrap CI]"),
            notes=[provenance(len(cells)),
                   "MAE: mean |ŷ - y| (lower is better); Corr: Pearson r; Acc2 / F1-2: 1[ŷ > 0] vs 1[y > 0] over "
                   f"segments with y != 0 (MulT's exclude_zero); ΔMAE, ΔAcc2: ranges over the {sweep.attribute} "
                   "groups (lower is better)."])
    elif layout == "cberl":
        from fairray.report.cberl import cberl_report, render_cberl_markdown

        table, cells = cberl_report(sweep, minority=args.minority, split=args.split, n_boot=args.n_boot,
                                    seed=args.seed)
        md = render_cberl_markdown(table, title=(
            f"{experiment} / {name}: {args.split} per-class metrics, mean over seeds [95% speaker-bootstrap CI]"),
            notes=[provenance(len(cells)),
                   f"F1 <class>: one-vs-rest F1 of that class; minority WA-F1 / WA-acc: support-weighted F1 and "
                   f"recall of {' and '.join(args.minority)} together (the seed's claim); ΔW-F1, TPR gap: "
                   f"{sweep.attribute} gaps (on MELD: the main cast; U speakers are outside every gap)."])
    elif layout == "minmaxgap":
        from fairray.report.minmaxgap import minmaxgap_report, render_minmaxgap_markdown

        tables, cells = minmaxgap_report(sweep, split=args.split, n_boot=args.n_boot, seed=args.seed)
        md = render_minmaxgap_markdown(tables, title=(
            f"{experiment} / {name}: {args.split} metrics (METHODS 2.5), mean over seeds [95% speaker-bootstrap CI]"),
            notes=[provenance(len(cells)),
                   "Gaps are of the attribute inside each subset; AVG = (dTPR + dFPR + dW-F1 + dACC) / 4. direction "
                   "ours/paper: + / − / ~ (within noise) for our change against ERM, then the sign the paper reports "
                   "(W-F1 up, AVG down; MELD-ST with Qwen2-Audio: values not comparable)."])
    else:
        rows, cells = idi_rows(sweep, split=args.split, n_boot=args.n_boot, seed=args.seed)
        md = render_markdown(rows, title=f"{experiment} / {name}: {args.split} metrics, mean over seeds [95% "
                             "speaker-bootstrap CI]", notes=[
            provenance(len(cells)),
            "Random: uniform random scores decided like the models' outputs. Overall: mean of RW, DS, GDRO, "
            "GADRO per supervision; Gain: relative to ERM (positive = fairer / more useful).",
            "Δ vs ERM: difference of the seed means with its interval; direction ours/paper: + / − / ~ (within "
            "noise) for our change against the sign of IDI Table 1's change (CREMA-D; values not comparable)."])
        svg = lambda: render_svg(rows, title=f"{experiment} / {name}")  # noqa: E731 - drawn only when written
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / f"{experiment}-{name}.md", md)
        if svg is not None:
            atomic_write_text(out / f"{experiment}-{name}.svg", svg())
        print(f"wrote {out / f'{experiment}-{name}.md'}" + (" and .svg" if svg is not None else ""), file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fairray.export import export_front
    from fairray.frontier.query import fronts, load_sweep

    experiment, uri = _resolve_sweep_target(args.sweep, args.tracking_uri)
    sweep = load_sweep(uri, experiment, args.run_id, args.ablation)
    front = fronts(sweep)[0]
    done = export_front(sweep, front, args.out, register=args.register)
    for e in done:
        vals = ", ".join(f"{k}={v:.4f}" for k, v in e.objectives.items())
        reg = f"  registered {args.register} v{e.model_version}" if e.model_version else ""
        print(f"{e.path}  {vals}{reg}")
    print(f"{len(done)} Pareto-optimal trial(s) exported to {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from fairray.export import write_predictions

    frame = write_predictions(args.export, args.split, args.out)
    print(f"wrote {len(frame)} predictions to {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from fairray.errors import DataError
    from fairray.metrics import evaluate_frame, format_report

    if not Path(args.predictions).is_file():
        raise DataError(f"{args.predictions}: no such file; write one with `fairray predict EXPORT --out FILE`")
    df = pd.read_csv(args.predictions, dtype=str, keep_default_na=False)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    try:
        report = evaluate_frame(df, group=args.group, stratum=args.stratum, classes=classes, s_min=args.s_min)
    except DataError as exc:
        raise DataError(f"{args.predictions}: {exc}") from None
    print(format_report(report, split=args.split_name, fmt=args.format))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    uri = args.tracking_uri or _tracking_default()
    base = f"http://{args.host}:{args.port}"
    page = f"{base}/#/experiments?workflowType=machine_learning"
    if args.ablation and not args.sweep:
        raise ConfigError(f"--ablation {args.ablation} needs the SWEEP it belongs to: "
                          f"`fairray ui SPEC --ablation {args.ablation}`")
    if args.sweep:  # open the sweep's runs table, in MLflow's model-training workflow (not its GenAI overview)
        from fairray.dashboard import SweepUnavailable
        from fairray.errors import TrackingError
        from fairray.tracking import SHARED_VIEW_PREFIX, client, find_sweep_run, ui_url

        try:
            experiment, uri = _resolve_sweep_target(args.sweep, args.tracking_uri)
            parent = find_sweep_run(uri, experiment, ablation=args.ablation)
        except TrackingError as exc:  # an unknown sweep or ablation, no store there: bad input, exit 2
            raise SweepUnavailable(str(exc)) from None
        key = f"fairray-{parent.info.run_id[:12]}"
        tags = client(uri).get_experiment(parent.info.experiment_id).tags
        page = ui_url(base, parent.info.experiment_id, view=key if SHARED_VIEW_PREFIX + key in tags else None)
    # the store's URI goes to MLflow's server through its environment (MLFLOW_BACKEND_STORE_URI), never on the
    # command line, where a database password would show in every process listing
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", args.host, "--port", str(args.port), "--workers", "1"]
    print(f"MLflow UI for {shown_uri(uri)} (Ctrl-C to stop): open {page}", file=sys.stderr)
    os.execve(sys.executable, cmd, {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri})
    return 0  # pragma: no cover


def cmd_dashboard(args: argparse.Namespace) -> int:
    from fairray.dashboard import DashboardApp, SweepUnavailable, build_page, check_store, collect, make_server
    from fairray.errors import TrackingError

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # an unreachable server: one line, not minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    uri = args.tracking_uri or _tracking_default()
    try:
        experiment, uri = _resolve_sweep_target(args.sweep, args.tracking_uri)
        check_store(uri)
        compare = None
        if args.compare:  # by default in the sweep's store (a spec file: the store it names)
            default = None if args.compare.endswith((".yaml", ".yml")) else uri
            compare = _resolve_sweep_target(args.compare, args.compare_tracking_uri or default)
            check_store(compare[1])
        options = {"run_id": args.run_id, "ablation": args.ablation, "n_boot": args.n_boot,
                   "compare": (compare[1], compare[0], args.compare_run_id) if compare else None,
                   "mlflow_ui": args.mlflow_ui}
        if args.out:  # the whole page is built before anything is written: bad input leaves no file
            page = build_page(collect(uri, experiment, **options))
        else:
            app = DashboardApp(uri, experiment, **options)
            app.page()  # bad input fails here, before the server binds
    except TrackingError as exc:  # bad input for this command: exit 2
        raise SweepUnavailable(str(exc)) from None
    except Exception as exc:  # MLflow's own errors for a store it cannot read
        if type(exc).__module__.startswith("mlflow"):
            raise SweepUnavailable(f"cannot read the MLflow store {shown_uri(uri)} ({type(exc).__name__}); is it running and "
                                   "is --tracking-uri right?") from None
        raise
    if args.out:
        from fairray._atomic import atomic_write_text

        try:
            atomic_write_text(args.out, page)
        except OSError as exc:
            raise ConfigError(f"cannot write {args.out}: {exc.strerror or exc}; pick a writable --out") from None
        print(f"wrote {args.out}", file=sys.stderr)
        return 0
    try:
        server = make_server(app, args.host, args.port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}; pick another --port") from None
    host, port = server.server_address[:2]
    print(f"fairray dashboard of {experiment!r} on http://{host}:{port}/ (read-only; rebuilt when the sweep "
          "changes; Ctrl-C to stop)", file=sys.stderr)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0  # pragma: no cover


def cmd_data_build(args: argparse.Namespace) -> int:
    from fairray.data._build import build_builtin

    out_dir = args.out or str(Path(__file__).parent / "data" / "builtin")
    path = build_builtin(args.corpora, out_dir, workers=args.workers, progress=not args.quiet, cache_root=args.cache)
    print(f"wrote {path}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from fairray.config import DatasetConfig
    from fairray.data import prepare

    data = prepare(DatasetConfig(name=args.dataset))
    table = data.meta.groupby(["language", "gender", "split"]).agg(clips=("uid", "size"),
                                                                   speakers=("speaker", "nunique"))
    print(table.unstack("split").to_string())
    print(f"\nclasses: {', '.join(data.classes)}; features: {data.n_features}; fingerprint {data.fingerprint}")
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    from fairray.data import DATASETS
    from fairray.data.corpora import CORPORA

    print("built-in datasets (dataset.name in a spec): " + ", ".join(DATASETS.names()))
    print("\ncorpus adapters (fairray data stats NAME --root DIR):")
    for name in CORPORA:
        cls = CORPORA.get(name)
        verified = " [verified on real data]" if cls.verified_on_real_data else ""
        print(f"\n{name} ({', '.join(cls.languages)}){verified}")
        if args.layouts:
            print(textwrap.indent(cls.layout(), "    "))
    if not args.layouts:
        print("\n(--layouts shows each corpus's expected directory layout)")
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from fairray.data.corpora import CORPORA, corpus_stats, format_stats

    table = CORPORA.get(args.corpus)().load(args.root)
    print(format_stats(corpus_stats(table, root=args.root), fmt=args.format))
    return 0


def cmd_data_features(args: argparse.Namespace) -> int:
    from fairray.config import parse_override
    from fairray.data.corpora import CORPORA
    from fairray.data.features import FeatureCache, make_extractor

    params = dict(parse_override(text) for text in args.param)
    extractor = make_extractor(args.extractor, **params)
    table = CORPORA.get(args.corpus)().load(args.root)
    cache_root = args.cache or str(Path(DEFAULT_STORAGE).resolve() / "features")
    feats = FeatureCache(cache_root).get_or_compute(table, args.root, extractor, progress=not args.quiet,
                                                    num_workers=args.workers)
    print(feats.report.format())
    print(f"{args.corpus}: {len(feats.uids)} of {len(table)} clips x {feats.X.shape[1]} features "
          f"({'cache hit' if feats.hit else 'extracted'}; key {feats.key[:16]}; cache {cache_root})")
    return 0


# ---------------------------------------------------------------- parser
def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="sweep spec YAML, e.g. search_spaces/minmaxgap.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value by dotted key (repeatable), e.g. --set train.epochs=5")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _report_split(text: str) -> str:
    """dev, test or the name of an extra test set (``test_<name>``, logged like test)."""
    import re

    if text in ("dev", "test") or re.fullmatch(r"test_[A-Za-z0-9_]+", text):
        return text
    raise argparse.ArgumentTypeError(f"expected dev, test or an extra test set such as test_ood_text; got {text!r}")


def _class_list(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected class names separated by commas, e.g. fear,disgust; got {text!r}")
    return names


def _gap_budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a gap in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a gap in [0, 1], got {value:g}")
    return value


def _add_sweep_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="MLflow experiment of the sweep (the spec's name) or the spec file itself")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                                          f"sqlite:///$PWD/{DEFAULT_STORAGE}/mlflow.db)")
    p.add_argument("--run-id", help="a specific sweep (parent) run; default: the latest one")
    p.add_argument("--ablation", metavar="NAME", help="the latest run of the spec's declared ablation NAME "
                                                      "(`fairray sweep SPEC --ablation NAME`) instead of the search")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fairray", description=_MAIN_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, fn: Callable, help_: str, epilog: str = "") -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=textwrap.dedent(epilog),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(fn=fn)
        return p

    p = add("sweep", cmd_sweep, "run a Ray Tune + Optuna multi-objective sweep of a spec", """\
        Each trial trains the spec's method with sampled hyperparameters (a Ray Train TorchTrainer, or
        directly in the Tune trial for single-worker CPU trials: resources.backend), reports a dev
        metric per epoch and a checkpoint, and is one nested MLflow run. Optuna gets the final dev
        values of all objectives (true multi-objective: no weighted sum).

        examples:
          fairray sweep search_spaces/minmaxgap.yaml
          fairray sweep search_spaces/minmaxgap.yaml --num-samples 8 --set train.epochs=10
          fairray sweep search_spaces/minmaxgap.yaml --resume          # after Ctrl-C or a crash
          fairray sweep search_spaces/idi.yaml --ablation table1       # the spec's declared grid
          fairray sweep search_spaces/minmaxgap.yaml --address ray://head:10001 \\
              --set tracking.uri=http://mlflow:5000 --set storage.path=s3://bucket/fairray
        """)
    _add_spec_args(p)
    p.add_argument("--num-samples", type=int, help="number of trials (overrides budget.num_samples)")
    p.add_argument("--address", help="join an existing Ray cluster (e.g. auto, ray://head:10001)")
    p.add_argument("--resume", action="store_true", help="continue the latest sweep of this spec")
    p.add_argument("--ablation", metavar="NAME", help="run the grid declared under `ablations: NAME` in the spec "
                                                      "instead of the search (its own MLflow parent run)")
    p.add_argument("--quiet", action="store_true", help="no live progress table")

    p = add("submit", cmd_submit, "run a sweep on a Ray cluster through its job API (logs followed, Ctrl-C stops it)",
            """\
        Validates the spec here, ships the working folder (which must hold the spec) as the job's working
        dir and runs `fairray sweep SPEC --address auto` with the same options on the cluster's head. The
        logs are followed until the job ends and its exit code is this command's; Ctrl-C stops the job (the
        sweep stops as after a local Ctrl-C: continue it with --resume). Needs `pip install 'fairray[cluster]'`;
        a token-authenticated cluster's token comes from RAY_AUTH_TOKEN / ~/.ray/auth_token (RAY_AUTH_MODE=token).

        examples:
          ray dashboard clusters/aws-gpu.yaml &        # the head's job API on http://127.0.0.1:8265
          fairray submit search_spaces/minmaxgap.yaml --address http://127.0.0.1:8265 \\
              --set resources.gpus_per_worker=1 --set tracking.uri=http://mlflow:5000 \\
              --set storage.path=s3://bucket/fairray
          fairray submit search_spaces/minmaxgap.yaml --address http://127.0.0.1:8265 --resume --no-follow
        """)
    _add_spec_args(p)
    p.add_argument("--address", help="the cluster's job API (dashboard) address, e.g. http://127.0.0.1:8265 "
                                     "(default: $RAY_API_SERVER_ADDRESS)")
    p.add_argument("--working-dir", help="folder shipped to the cluster as the job's working dir; it must hold "
                                         "the spec (default: the current folder)")
    p.add_argument("--num-samples", type=int, help="number of trials (overrides budget.num_samples)")
    p.add_argument("--resume", action="store_true", help="continue the latest sweep of this spec")
    p.add_argument("--ablation", metavar="NAME", help="run the grid declared under `ablations: NAME` in the spec")
    p.add_argument("--follow", action=argparse.BooleanOptionalAction, default=True,
                   help="follow the job's logs until it ends (default); --no-follow returns once it is submitted")
    p.add_argument("--quiet", action="store_true", help="no live progress table in the job's logs")

    p = add("train", cmd_train, "train one configuration in-process (no Tune): debugging and baselines", """\
        example: fairray train search_spaces/minmaxgap.yaml --set method.lambda_max=5 --set train.epochs=10
        """)
    _add_spec_args(p)
    p.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add("methods", cmd_methods, "list registered methods, their hyperparameters and what they need")
    p.add_argument("--format", choices=["table", "json"], default="table")

    p = add("models", cmd_models, "list registered models, the input kinds they accept and their hyperparameters",
            """\
        A model reads the dataset's named inputs (vector features, frame sequences, 16 kHz waveforms or
        tokens); a spec whose model cannot read its dataset's inputs is refused when it is loaded.

        examples:
          fairray models
          fairray models --format json
        """)
    p.add_argument("--format", choices=["table", "json"], default="table")

    p = add("frontier", cmd_frontier, "Pareto fronts of a sweep from MLflow, overall or per language/subgroup", """\
        The front of the sweep's objectives (dev metrics), or with --by the same objectives restricted
        to each language and/or gender: a utility becomes the subgroup's utility, a gap becomes the gap
        inside that language (a gap restricted to one gender stays the enclosing gap). Hypervolume is
        computed against a stated reference point (default: 0 for maximised, 1 for minimised metrics).
        Each trial's dto is its distance to the utopia point (utility 1, gap 0): sqrt((1 - U)^2 + Gap^2);
        --tau GAP adds util_at_tau (U where Gap <= GAP, else -1) and the best trial within that gap.

        examples:
          fairray frontier minmaxgap
          fairray frontier minmaxgap --by language --plot fronts.html
          fairray frontier minmaxgap --by language,gender --split test --format csv
          fairray frontier minmaxgap --objectives dev/macro_f1:max,dev/avg_gap/gender/mean:language:min
          fairray frontier minmaxgap --tau 0.1 --by language
          fairray frontier minmaxgap --include-pruned --all      # with the trials early stopping stopped
          fairray frontier --compare minmaxgap erm               # two sweeps' fronts and their quality
          fairray frontier --compare minmaxgap@RUN_A minmaxgap@RUN_B   # two runs of one experiment

        A front holds the trials that meet the sweep's search.constraints (the others are listed with --all,
        marked infeasible) and that trained fully (--include-pruned adds those early stopping stopped, at the
        values of their rung). --compare prints both fronts side by side with hypervolume, IGD+ against
        their joint front (the non-dominated points of both; 0 = reaches all of it) and the best DTO.
        """)
    p.add_argument("sweep", nargs="?",
                   help="MLflow experiment of the sweep (the spec's name) or the spec file itself")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                                          f"sqlite:///$PWD/{DEFAULT_STORAGE}/mlflow.db)")
    p.add_argument("--run-id", help="a specific sweep (parent) run; default: the latest one")
    p.add_argument("--ablation", metavar="NAME", help="the latest run of the spec's declared ablation NAME "
                                                      "(`fairray sweep SPEC --ablation NAME`) instead of the search")
    p.add_argument("--compare", nargs=2, metavar=("SWEEP_A", "SWEEP_B"),
                   help="two sweeps (experiment, spec file, or EXPERIMENT@RUN_ID) side by side: fronts, "
                        "hypervolume, IGD+ against their joint front, best DTO")
    p.add_argument("--include-pruned", action="store_true",
                   help="put trials early stopping stopped on the fronts too (at their values at the rung)")
    p.add_argument("--objectives", help="comma-separated METRIC:max|min (default: the sweep's objectives)")
    p.add_argument("--by", help="language, gender, or language,gender")
    p.add_argument("--split", choices=["dev", "test"], default="dev",
                   help="metrics to build the fronts from (test is for reporting; selection uses dev)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--all", action="store_true", help="list dominated trials too")
    p.add_argument("--reference", help="hypervolume reference point, comma-separated, in objective order")
    p.add_argument("--plot", metavar="FILE.html", help="write a self-contained interactive page of the fronts")
    p.add_argument("--noise", action="store_true",
                   help="95%% speaker-bootstrap CIs of the Pareto-optimal trials' objectives, and ~ where a gap "
                        "differs from the next Pareto-optimal trial's only within noise (paired bootstrap)")
    p.add_argument("--n-boot", type=_positive_int, default=200, help="bootstrap replicates for --noise (default 200)")
    p.add_argument("--tau", type=_gap_budget, metavar="GAP",
                   help="gap budget: add util_at_tau (the utility where the gap is <= GAP, else -1) and name the best "
                        "trial under it; needs one utility and one gap objective")

    p = add("report", cmd_report, "a paper's table from an ablation: mean over seeds with CIs", """\
        Reads the ablation's trials and their logged test predictions from MLflow and prints a paper's
        table, every value the mean over seeds with a speaker-level bootstrap interval and each cell's
        change against ERM (within noise or not, and in the paper's direction or not):
          idi        IDI Table 1: per cell (method x group source ...) F1, ACC, TPR gap, DP gap, the
                     Random baseline, IDI's Overall and Gain rows;
          minmaxgap  MinMaxGAP (METHODS 4.4): per language and pooled W-F1, ACC, dTPR, dFPR, dW-F1,
                     dACC and their mean AVG;
          cberl      CBERL (METHODS 3.12, 4.5): per cell F1 of the minority classes (--minority), their
                     weighted-average F1 and accuracy, W-F1, macro-F1 and the gender gaps, against ERM
                     and focal-only ERM;
          auto       cberl when a cell is CBERL, minmaxgap when every cell is ERM or MinMaxGAP, else idi.

        examples:
          fairray sweep search_spaces/idi.yaml --ablation table1
          fairray report search_spaces/idi.yaml --ablation table1 --out report/
          fairray sweep search_spaces/minmaxgap.yaml --ablation paper
          fairray report search_spaces/minmaxgap.yaml --ablation paper
          fairray report search_spaces/cberl.yaml --ablation paper --out report/
          fairray report search_spaces/gear.yaml --ablation paper --split test_ood_text   # an extra test set
        """)
    _add_sweep_target(p)
    p.add_argument("--split", type=_report_split, default="test",
                   help="dev, test, or an extra test set the trials logged (test_ood_text, ...)")
    p.add_argument("--n-boot", type=_positive_int, default=200, help="bootstrap replicates (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the Random baseline")
    p.add_argument("--layout", choices=["auto", "idi", "minmaxgap", "cberl", "regression"], default="auto",
                   help="which paper's table")
    p.add_argument("--minority", type=_class_list, default=("fear", "disgust"),
                   help="cberl layout: the minority classes, comma-separated (default fear,disgust)")
    p.add_argument("--out", help="folder for the markdown table (and, for idi, the SVG plot)")

    p = add("export", cmd_export, "export Pareto-optimal checkpoints, configs and model cards", """\
        examples:
          fairray export minmaxgap --out pareto/
          fairray export minmaxgap --out pareto/ --register ser-minmaxgap   # + MLflow registry aliases
        """)
    _add_sweep_target(p)
    p.add_argument("--out", required=True, help="output folder (one subfolder per trial)")
    p.add_argument("--register", metavar="NAME", help="also register each checkpoint as a model version "
                                                      "(aliases pareto-K by first objective, best-I per objective)")

    p = add("predict", cmd_predict, "apply an exported model to a split; write y_true, y_pred, groups, p_<class>")
    p.add_argument("export", help="an exported trial folder, e.g. pareto/<trial>")
    p.add_argument("--split", default="test", choices=["train", "dev", "test"])
    p.add_argument("--out", required=True, help="predictions CSV to write")

    p = add("evaluate", cmd_evaluate, "per-group metrics and gaps of any predictions CSV", """\
        The CSV needs y_true and y_pred (class names) and the group/stratum columns; p_<class> columns,
        when present, fix the class set. The numbers are computed by the same code as in training.

        example: fairray evaluate preds.csv --group gender --stratum language --format json
        """)
    p.add_argument("predictions")
    p.add_argument("--group", required=True, help="protected attribute column, e.g. gender")
    p.add_argument("--stratum", help="stratum column gaps are computed inside, e.g. language")
    p.add_argument("--classes", help="comma-separated class names (default: p_<class> columns or labels seen)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--split-name", default="test", help="split prefix of the metric names (default test)")
    p.add_argument("--s-min", type=int, default=1,
                   help="minimum support of a per-group rate (the trial's train.s_min reproduces its logged metrics; "
                        "5 for specs that search on a gap and set none)")

    p = add("dashboard", cmd_dashboard, "the fairness explorer of a sweep: fronts per language and gender with "
            "intervals, trial details, ablations", """\
        Fronts of the sweep's objectives overall, per language and per gender side by side, each
        Pareto-optimal trial with its 95% speaker-bootstrap whiskers (from its logged predictions) and ~
        where its gap ties the next one within noise; hovering a trial rings it in every panel, clicking
        it shows its hyperparameters, its metrics per gender x language, its curves over epochs, its
        MLflow run and its `fairray export` line; parallel coordinates of the searched hyperparameters;
        the tables of the ablations the spec declares. Served read-only on 127.0.0.1 and rebuilt while
        the sweep runs, or written as one self-contained HTML file (--out) that needs no network.

        examples:
          fairray dashboard minmaxgap                      # http://127.0.0.1:8050/
          fairray dashboard minmaxgap --out minmaxgap.html
          fairray dashboard minmaxgap --compare erm        # another sweep's front on the same axes
        """)
    _add_sweep_target(p)
    p.add_argument("--out", metavar="FILE.html", help="write the page as one self-contained file instead of serving")
    p.add_argument("--compare", metavar="OTHER", help="another sweep (experiment or spec file) drawn on the same axes")
    p.add_argument("--compare-tracking-uri", help="MLflow store of --compare (default: the sweep's)")
    p.add_argument("--compare-run-id", help="a specific sweep run of --compare (default: its latest search)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8050, help="port (default 8050; 0 picks a free one)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates of the whiskers (0: none)")
    p.add_argument("--mlflow-ui", metavar="URL", help="base URL of the MLflow UI for run links (default: the "
                                                       "tracking server, or http://127.0.0.1:5000 of `fairray ui`)")

    p = add("ui", cmd_ui, "open the MLflow UI on the sweep store")
    p.add_argument("sweep", nargs="?", help="a sweep (experiment or spec file): print the link to its runs table")
    p.add_argument("--tracking-uri")
    p.add_argument("--ablation", metavar="NAME", help="with SWEEP: the latest run of the spec's declared ablation "
                                                      "NAME (`fairray sweep SPEC --ablation NAME`) instead of the search")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)

    p = add("data", None, "the built-in dataset: inspect it or rebuild it from the corpora")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    d = dsub.add_parser("list", help="registered datasets and corpus adapters")
    d.add_argument("--layouts", action="store_true", help="show each adapter's expected directory layout")
    d.set_defaults(fn=cmd_data_list)
    d = dsub.add_parser("stats", help="counts by language x gender x emotion, speakers, durations of a corpus",
                        description="example: fairray data stats ravdess --root /data/RAVDESS")
    d.add_argument("corpus", help="a corpus adapter name (see `fairray data list`)")
    d.add_argument("--root", required=True, help="the corpus folder, in the adapter's native layout")
    d.add_argument("--format", choices=["table", "json"], default="table")
    d.set_defaults(fn=cmd_data_stats)
    d = dsub.add_parser("features", help="extract (or read from the cache) one extractor's features of a corpus",
                        description="examples:\n  fairray data features ravdess --root /data/RAVDESS "
                                    "--extractor opensmile_egemaps\n  fairray data features emodb --root /data/emodb "
                                    "--extractor hf_ssl --param model_path=/models/wavlm-base-plus --param layers=[6]",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("corpus", help="a corpus adapter name (see `fairray data list`)")
    d.add_argument("--root", required=True, help="the corpus folder, in the adapter's native layout")
    d.add_argument("--extractor", required=True,
                   help="opensmile_egemaps, opensmile_compare, hf_ssl, resemblyzer, minilm, hf_text, ecapa")
    d.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="extractor parameter")
    d.add_argument("--cache", help=f"cache root, a folder or a bucket URI (default ./{DEFAULT_STORAGE}/features)")
    d.add_argument("--workers", type=int, default=1, help="parallel extraction processes")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(fn=cmd_data_features)
    d = dsub.add_parser("info", help="counts per language x gender x split of a registered dataset")
    d.add_argument("--dataset", default="ser3")
    d.set_defaults(fn=cmd_data_info)
    d = dsub.add_parser("build-builtin", help="re-extract eGeMAPS features and speaker embeddings of RAVDESS/EmoDB/nEMO (needs [features])",
                        description="expects CORPORA/{ravdess,emodb,nemo}/manifest.csv and the audio they name")
    d.add_argument("--corpora", required=True, help="folder holding ravdess/, emodb/, nemo/")
    d.add_argument("--out", help="output folder (default: the package's built-in data folder)")
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--cache", help=f"feature cache root (default ./{DEFAULT_STORAGE}/features)")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(fn=cmd_data_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    for noisy in ("mlflow.store.db.utils", "alembic.runtime.migration"):  # store creation chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # exports fetch a few small files
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "fn", None) is None:
        parser.print_help()
        return 2
    try:
        return args.fn(args)
    except FairrayError as exc:
        if args.debug:
            raise
        print(f"fairray: error: {exc}".splitlines()[0], file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fairray: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fairray ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
