"""The report's opening: which arm wins, in plain words, per dataset and axis values.

The same paired tests as results.md (seed s against seed s, within one dataset and one set of axis
values), said as sentences so that a reader gets the answer before the tables.
"""

from __future__ import annotations

from fkt.report.axes import axes_label, thawed
from fkt.report.tables import WARNED, paired_tests, warned_groups


def chosen_tests(runs: list[dict]) -> list[tuple[str, tuple, str, str, dict]]:
    """Functional against each other arm, and every arm against FixMatch (the few-label field's standard);
    where a dataset and axis values have neither, the other comparisons there, so that every report
    opens with its verdicts."""
    tests = paired_tests(runs, "accuracy")

    def central(test: tuple) -> bool:
        return "functional" in test[2:4] or test[3] == "fixmatch"

    with_central = {t[:2] for t in tests if central(t)}
    return [t for t in tests if central(t) or t[:2] not in with_central]


def sentence(a: str, b: str, test: dict) -> str:
    """One comparison: the winner and by how many points with the 95% interval, or no difference."""
    diff, seeds = 100 * test["mean_diff"], f"{test['n']} seed{'' if test['n'] == 1 else 's'}"
    if test["p_value"] is None:
        return f"{a} against {b}: {diff:+.2f} points over {seeds}, too few seeds to test (two are needed)"
    if not test["significant"]:
        return (f"{a} against {b}: no significant difference ({diff:+.2f} points, 95% CI "
                f"[{100 * test['ci_low']:+.2f}, {100 * test['ci_high']:+.2f}], {seeds}, p = {test['p_value']:.3g})")
    sign = 1 if diff > 0 else -1
    winner, loser = (a, b) if sign > 0 else (b, a)
    low, high = sorted((sign * 100 * test["ci_low"], sign * 100 * test["ci_high"]))
    return (f"{winner} beats {loser} by {abs(diff):.2f} points (95% CI [{low:.2f}, {high:.2f}], {seeds}, "
            f"p = {test['p_value']:.3g})")


def verdicts_markdown(runs: list[dict]) -> str:
    """A "Verdicts" section: one line per dataset and axis values, each comparison a sentence."""
    lines: dict[tuple, list[str]] = {}
    for dataset, axes, a, b, test in chosen_tests(runs):
        lines.setdefault((dataset, axes), []).append(sentence(a, b, test))
    note = untrained_note(runs)
    if not lines:
        return "## Verdicts (test accuracy)\n\nOnly one arm ran: nothing to compare.\n" + (f"\n{note}\n" if note else "")
    body = [f"- {', '.join(filter(None, (dataset, axes_label(thawed(axes)))))}: {'; '.join(said)}."
            for (dataset, axes), said in lines.items()]
    body += [note] if note else []
    return ("## Verdicts (test accuracy, paired over seeds, 95% intervals in points)\n\n"
            + "\n".join(body) + "\n")


def untrained_note(runs: list[dict]) -> str:
    """A line naming the arms with a run whose SSL stage did not learn (metrics.json `warnings`), or ""."""
    warned = warned_groups(runs)
    if not warned:
        return ""
    arms = "; ".join(f"{arm} ({', '.join(filter(None, (dataset, axes_label(thawed(axes)))))})"
                     for dataset, axes, arm in sorted(warned, key=str))
    return (f"- {WARNED} An SSL stage did not learn in some runs of: {arms}. Verdicts on those arms compare an "
            "SSL part that never trained (see the notes under the test metrics).")
