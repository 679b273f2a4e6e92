"""``postwise experiments``: define experiments, read their reports, stop them, plan their size."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from postwise.cli.common import emit_json, get_runtime
from postwise.errors import ValidationError
from postwise.runtime import Runtime


@click.group()
def experiments() -> None:
    """A/B/n experiments on campaigns and triggers (docs/experiments.md)."""


def _pairs(values: tuple[str, ...], option: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name.strip() or not rest.strip():
            raise click.BadParameter(f"{value!r} is not NAME=VALUE", param_hint=option)
        pairs.append((name.strip(), rest.strip()))
    return pairs


def _variants(
    variants: tuple[str, ...], templates: tuple[str, ...], subjects: tuple[str, ...]
) -> list[dict[str, Any]]:
    specs: dict[str, dict[str, Any]] = {}
    for name, weight in _pairs(variants, "--variant"):
        try:
            specs[name] = {"name": name, "weight": float(weight)}
        except ValueError:
            raise click.BadParameter(
                f"weight {weight!r} is not a number", param_hint="--variant"
            ) from None
    for name, value in _pairs(templates, "--template"):
        if name not in specs:
            raise click.BadParameter(f"no --variant {name}", param_hint="--template")
        template, _, version = value.partition("@")
        if not template.isdigit() or (version and not version.isdigit()):
            raise click.BadParameter(f"{value!r} is not ID or ID@VERSION", param_hint="--template")
        specs[name]["template_id"] = int(template)
        if version:
            specs[name]["template_version"] = int(version)
    for name, subject in _pairs(subjects, "--subject"):
        if name not in specs:
            raise click.BadParameter(f"no --variant {name}", param_hint="--subject")
        specs[name]["subject"] = subject
    return list(specs.values())


@experiments.command()
@click.argument(
    "file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False
)
@click.option("--name", help="Unique name.")
@click.option(
    "--variant",
    "variants",
    multiple=True,
    metavar="NAME=WEIGHT",
    help="A variant and its share (repeat; the first is the control; shares sum to 1).",
)
@click.option(
    "--template",
    "templates",
    multiple=True,
    metavar="NAME=ID[@VERSION]",
    help="The template (version) a variant sends instead of the campaign's.",
)
@click.option(
    "--subject",
    "subjects",
    multiple=True,
    metavar="NAME=SUBJECT",
    help="A variant's subject line (saved as a version of its template).",
)
@click.option("--holdout", type=float, help="Share that gets no email at all.")
@click.option("--metric", type=click.Choice(["open", "click", "conversion"]))
@click.option("--method", help="Stats test: sequential (default), chi2, bayesian or a plugin's.")
@click.option("--alpha", type=float)
@click.option("--target", type=click.Choice(["campaign", "trigger"]))
@click.option("--campaign", "campaign_id", type=int, help="Attach to this draft campaign.")
@click.option("--rollout-fraction", type=float, help="Share held back for the winner.")
@click.option("--baseline", type=float, help="Expected control rate (tunes the test).")
@click.option(
    "--mde", type=float, help="Relative lift to detect: the sequential mixture is tuned to it."
)
@click.option(
    "--covariate",
    type=click.Choice(["pre_period", "pre_engagement"]),
    help="Pre-exposure covariate for CUPED (variance reduction).",
)
@click.option(
    "--allocation",
    type=click.Choice(["fixed", "bandit"]),
    help="bandit: Thompson sampling moves traffic to the leader (needs more exposures).",
)
@click.option("--bandit-floor", type=float, help="Share no arm of a bandit falls below.")
@click.option("--sequential-tuning", type=float, help="N* of the sequential test.")
@click.option("--min-exposures", type=int)
@click.option("--min-conversions", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def create(ctx: click.Context, file: Path | None, as_json: bool, **options: Any) -> None:
    """Create an experiment from a JSON FILE, options, or both (options win)."""
    from postwise.experiments.service import create_experiment, experiment_dict

    data: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = json.loads(file.read_text())
        except ValueError as exc:
            raise ValidationError(f"{file} is not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ValidationError(f"{file} must hold one JSON object (an experiment definition)")
        data.update(loaded)
    variants = _variants(options.pop("variants"), options.pop("templates"), options.pop("subjects"))
    if variants:
        data["variants"] = variants
    data.update({key: value for key, value in options.items() if value is not None})
    runtime = get_runtime(ctx)
    runtime.migrate()
    with runtime.session() as session:
        shown = experiment_dict(session, create_experiment(session, runtime, data))
    if as_json:
        emit_json(shown)
        return
    names = ", ".join(f"{v['name']} {v['weight']:g}" for v in shown["variants"])
    click.echo(
        f"experiment {shown['id']} {shown['name']!r} created: {names}; metric {shown['metric']}, "
        f"method {shown['method']} by {shown['index']}"
    )


@experiments.command(name="list")
@click.option("--status", type=click.Choice(["running", "decided", "stopped"]))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_(ctx: click.Context, status: str | None, as_json: bool) -> None:
    """List experiments, newest first."""
    from postwise.experiments.service import experiment_dict, list_experiments

    runtime = get_runtime(ctx)
    with runtime.session() as session:
        rows = [experiment_dict(session, e) for e in list_experiments(session, status=status)]
    if as_json:
        emit_json({"experiments": rows})
        return
    for row in rows:
        winner = f"winner {row['winner']}" if row["winner"] else ""
        flag = " [flagged]" if row["flagged"] else ""
        click.echo(
            f"{row['id']:>5}  {row['status']:<8} {row['metric']:<10} {row['method']:<10} "
            f"{row['name']}  {winner}{flag}".rstrip()
        )


def _percent(value: float | None, signed: bool = True) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "unbounded"
    return f"{value * 100:+.2f}%" if signed else f"{value * 100:.2f}%"


def _lift(line: dict[str, Any]) -> str:
    lift = line["relative_lift"] or line["absolute_lift"]
    if lift is None:
        return "control"
    kind = "rel." if line["relative_lift"] else "abs."
    return (
        f"{kind} {_percent(lift['estimate'])} "
        f"({_percent(lift['lower'])} to {_percent(lift['upper'])})"
    )


def _print_extras(report: dict[str, Any]) -> None:
    for name, info in (report["experiment"].get("stopped_arms") or {}).items():
        click.echo(f"stopped {name}: {info.get('reason')}")
    holdout = report.get("holdout")
    if holdout:
        click.echo(
            f"holdout ({holdout['holdout_share'] * 100:g}%): {holdout['reason']}; incremental "
            f"conversions {holdout['incremental_conversions']:+,.0f}"
        )


def _print_bandit(report: dict[str, Any]) -> None:
    analysis = report["analysis"]
    for line in analysis["variants"]:
        click.echo(f"  {line['name']:<12} {line['exposures']:>10,} {line['conversions']:>11,}")
    for c in analysis["comparisons"]:
        lift = c["absolute_lift"]
        click.echo(
            f"  {c['variant']}: lift {lift['estimate'] * 100:+.3f} points "
            f"({lift['lower'] * 100:+.3f} to {lift['upper'] * 100:+.3f}), "
            f"p (Holm) {c['p_value_holm']:.3g}"
        )
    click.echo(
        f"decision: {report['decision']}"
        + (f", winner {report['winner']}" if report["winner"] else "")
    )
    click.echo(f"  {report['reason']}")
    if analysis.get("next_weights"):
        weights = ", ".join(f"{k} {v:.2f}" for k, v in analysis["next_weights"].items())
        click.echo(f"next epoch's weights: {weights}")
    click.echo(f"guarantees: {analysis['guarantees']}")
    click.echo(f"cost: {analysis['cost']}")
    _print_extras(report)


def _print_report(report: dict[str, Any]) -> None:
    experiment, analysis = report["experiment"], report["analysis"]
    click.echo(
        f"experiment {experiment['id']} {experiment['name']!r}: {experiment['status']}, "
        f"metric {experiment['metric']}, {experiment['method']} by {experiment['index']}, "
        f"alpha {experiment['alpha']:g}, look {experiment['looks']}"
        + ("" if report["recorded"] else " (not recorded: the experiment is closed)")
    )
    if "cost" in analysis:
        _print_bandit(report)
        return
    click.echo(
        f"  {'variant':<12} {'exposures':>10} {'conversions':>11} {'rate':>8}  "
        f"{'lift (interval)':<38} {'p (Holm)':>9} {'P(beat)':>8}"
    )
    for line in analysis["variants"]:
        p = "" if line["p_value_holm"] is None else f"{line['p_value_holm']:.3g}"
        beat = line["posterior"]["probability_to_beat_control"] if line["posterior"] else None
        click.echo(
            f"  {line['name']:<12} {line['exposures']:>10,} {line['conversions']:>11,} "
            f"{_percent(line['rate'], signed=False):>8}  {_lift(line):<38} {p:>9} "
            f"{'' if beat is None else f'{beat * 100:.1f}%':>8}"
        )
    click.echo(
        f"decision: {report['decision']}"
        + (f", winner {report['winner']}" if report["winner"] else "")
    )
    click.echo(f"  {report['reason']}")
    srm = "flagged" if analysis["srm_flagged"] else "ok"
    click.echo(f"sample-ratio check: p = {analysis['srm_p_value']:.3g} ({srm})")
    for warning in analysis["warnings"]:
        click.echo(f"warning: {warning}")
    click.echo(f"guarantees: {analysis.get('guarantees', '')}")
    for line in analysis["variants"]:
        if line.get("variance_reduction") is not None:
            click.echo(
                f"CUPED {line['name']}: variance {line['variance_reduction'] * -100:+.1f}%, "
                f"the same power with {line['variance_reduction'] * 100:.1f}% fewer exposures"
            )
    _print_extras(report)
    rollout = experiment.get("rollout")
    if rollout:
        detail = f" ({rollout['detail']})" if rollout.get("detail") else ""
        click.echo(f"rollout of {rollout['variant']}: {rollout['status']}{detail}")


def _maybe_drain(runtime: Runtime, report: dict[str, Any], drain: bool | None) -> None:
    """Run a just-queued rollout in this process when no worker can (embedded Redis)."""
    from postwise.delivery.atomic import supports_lua
    from postwise.delivery.worker import drain as drain_queues

    rollout = report["experiment"].get("rollout") or {}
    if rollout.get("status") != "queued":
        return
    if drain is None:
        drain = not supports_lua(runtime.redis)
    if drain:
        drain_queues(runtime)


_DRAIN = click.option(
    "--drain/--no-drain",
    default=None,
    help="Run a rollout this look queues in this process (default: only with the embedded "
    "Redis, where no separate worker can run).",
)


@experiments.command()
@click.argument("experiment")
@_DRAIN
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def report(ctx: click.Context, experiment: str, drain: bool | None, as_json: bool) -> None:
    """Take a look at EXPERIMENT (id or name): counts, lifts, p-values, the decision.

    While the experiment runs, the look is recorded: that is what keeps the decision valid
    however often anyone looks.
    """
    from postwise.experiments.service import experiment_report

    runtime = get_runtime(ctx)
    result = experiment_report(runtime, experiment)
    _maybe_drain(runtime, result, drain)
    if as_json:
        emit_json(result)
    else:
        _print_report(result)


@experiments.command()
@click.argument("experiment")
@click.option("--ship", help="Roll this variant out to the held-back audience (no winner).")
@_DRAIN
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def stop(
    ctx: click.Context, experiment: str, ship: str | None, drain: bool | None, as_json: bool
) -> None:
    """Stop EXPERIMENT after a last (recorded) look."""
    from postwise.experiments.service import stop_experiment

    runtime = get_runtime(ctx)
    result = stop_experiment(runtime, experiment, ship=ship)
    _maybe_drain(runtime, result, drain)
    if as_json:
        emit_json(result)
    else:
        _print_report(result)


@experiments.command()
@click.option("--baseline", type=float, required=True, help="Control conversion rate, e.g. 0.03.")
@click.option("--mde", type=float, required=True, help="Lift to detect: 0.10 = +10% relative.")
@click.option("--absolute", is_flag=True, help="MDE in rate points instead of relative.")
@click.option("--alpha", type=float, default=0.05, show_default=True)
@click.option("--power", type=float, default=0.8, show_default=True)
@click.option("--variants", type=int, default=2, show_default=True, help="Arms, control included.")
@click.option("--looks", type=int, default=20, show_default=True, help="Looks the cap assumes.")
@click.option("--json", "as_json", is_flag=True)
def plan(
    *,
    baseline: float,
    mde: float,
    absolute: bool,
    alpha: float,
    power: float,
    variants: int,
    looks: int,
    as_json: bool,
) -> None:
    """Exposures per arm: fixed horizon, and the cap the always-valid test needs."""
    from postwise.experiments.planning import plan as make_plan

    design = make_plan(
        baseline,
        mde,
        alpha=alpha,
        power=power,
        relative=not absolute,
        variants=variants,
        looks=looks,
    )
    if as_json:
        emit_json(design.to_dict())
        return
    click.echo(
        f"{design.baseline:.4g} -> {design.treatment_rate:.4g} at alpha {design.alpha:g} "
        f"(per comparison {design.comparison_alpha:.3g}), power {design.power:g}, "
        f"{design.variants} variants"
    )
    click.echo(f"  fixed horizon (chi2, one planned look): {design.fixed_per_arm:,} per arm")
    click.echo(
        f"  always-valid test (sequential), cap: {design.sequential_per_arm:,} per arm "
        f"({design.inflation:.2f}x fixed, {design.looks} looks); "
        f"sequential_tuning {design.sequential_tuning:,}"
    )
    click.echo(
        f"  always-valid test tuned to this effect "
        f"(--mde {design.treatment_rate / design.baseline - 1:.4g}), cap: "
        f"{design.tuned_per_arm:,} per arm ({design.tuned_inflation:.2f}x fixed)"
    )
    click.echo(
        f"  a send read by outcomes: {design.outcome_sequential_per_arm:,} recipients per arm; "
        f"sequential_tuning {design.outcome_tuning:,} outcomes"
    )
