"""
Run Twisted's connection tests against the gecko endpoints and the
baseline (L{tests.conformance.twistedsuite}), then compare.

    python3 -m tests.conformance [--markdown FILE] [-k SUBSTRING]

Prints the number of tests run per endpoint kind and reactor, for gecko and
for Twisted's own endpoints, and every gecko failure.  Exits non-zero when a
gecko test fails (or errs) where the same Twisted test passed, or when a
gecko test never reached a gecko listener (an exclusion list gone stale).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from typing import Any

from twisted.trial import reporter, runner
from twisted.trial.unittest import TestSuite


class _Recorder(reporter.Reporter):
    """
    A quiet reporter that remembers each test's outcome by id.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes: dict[str, str] = {}
        self.details: dict[str, str] = {}

    def _set(self, test: Any, outcome: str, detail: Any = None) -> None:
        self.outcomes[test.id()] = outcome
        if detail is not None:
            self.details.setdefault(test.id(), "")
            self.details[test.id()] += str(detail)[-3000:] + "\n"

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        self.outcomes.setdefault(test.id(), "ok")

    def addFailure(self, test: Any, fail: Any) -> None:
        super().addFailure(test, fail)
        self._set(test, "FAIL", fail)

    def addError(self, test: Any, error: Any) -> None:
        super().addError(test, error)
        self._set(test, "ERROR", error)

    def addSkip(self, test: Any, reason: Any) -> None:
        super().addSkip(test, reason)
        self._set(test, "skip")

    def addExpectedFailure(self, test: Any, failure: Any, todo: Any = None) -> None:
        super().addExpectedFailure(test, failure, todo)
        self._set(test, "xfail")

    def addUnexpectedSuccess(self, test: Any, todo: Any = None) -> None:
        super().addUnexpectedSuccess(test, todo)
        self._set(test, "FAIL", "unexpected success")


def _parse(testId: str) -> tuple[str, str, str, str, str]:
    """
    (impl, kind, builder, reactor, method) of a generated test's id.
    """
    className, method = testId.split(".")[-2:]
    impl, kind, rest = className.split("_", 2)
    builder, reactor = rest.rsplit("_", 1)
    return impl, kind, builder, reactor.removesuffix("Tests"), method


def _filter(suite: TestSuite, substring: str | None) -> TestSuite:
    if not substring:
        return suite
    kept = TestSuite()
    for test in suite:
        if substring in test.id():
            kept.addTest(test)
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.conformance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", help="also write the counts as a Markdown table to this file")
    parser.add_argument("-k", dest="substring", help="only tests whose id contains this")
    parser.add_argument("-v", action="store_true", help="print the traceback of each gecko-only failure")
    args = parser.parse_args(argv)

    from . import twistedsuite

    suite = _filter(twistedsuite.testSuite(), args.substring)
    workdir = tempfile.mkdtemp(prefix="gk-conformance-")
    here = os.getcwd()
    os.chdir(workdir)  # UNIXCreator and friends put sockets in ".".
    started = time.monotonic()
    try:
        trial = runner.TrialRunner(_Recorder, stream=open(os.devnull, "w"), workingDirectory=os.path.join(workdir, "_trial"))
        result = trial.run(suite)
    finally:
        os.chdir(here)
    elapsed = time.monotonic() - started
    outcomes: dict[str, str] = result.outcomes

    counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    reactors: set[str] = set()
    byKey: dict[tuple[str, str, str, str], str] = {}
    for testId, outcome in outcomes.items():
        impl, kind, builder, reactor, method = _parse(testId)
        reactors.add(reactor)
        counts[(kind, reactor)][impl + ":" + ("run" if outcome != "skip" else "skip")] += 1
        if outcome in ("FAIL", "ERROR"):
            counts[(kind, reactor)][impl + ":fail"] += 1
        byKey[(impl, kind, builder + "_" + reactor, method)] = outcome

    geckoOnly: list[str] = []
    shared: list[str] = []
    deviations: list[str] = []
    for (impl, kind, where, method), outcome in sorted(byKey.items()):
        if impl != "gecko" or outcome not in ("FAIL", "ERROR"):
            continue
        baseline = byKey.get(("twisted", kind, where, method))
        testId = f"gecko_{kind}_{where}Tests.{method}"
        if baseline in ("FAIL", "ERROR", "skip"):
            shared.append(f"{testId} (baseline: {baseline})")
        elif (where.rsplit("_", 1)[0], method) in twistedsuite.DEVIATIONS:
            deviations.append(f"{testId}: {twistedsuite.DEVIATIONS[(where.rsplit('_', 1)[0], method)]}")
        else:
            geckoOnly.append(testId)
    unhooked = sorted(
        t for t, o in outcomes.items() if t.split(".")[-2].startswith("gecko_") and o == "ok" and t not in twistedsuite.HOOKED
    )

    kinds = sorted({k for k, _ in counts})
    order = sorted(reactors)
    lines = ["| kind | " + " | ".join(order) + " |", "|---|" + "---|" * len(order)]
    for kind in kinds:
        cells = []
        for reactor in order:
            c = counts.get((kind, reactor), Counter())
            cell = f"{c['gecko:run']} / {c['twisted:run']}"
            if c["gecko:fail"] or c["twisted:fail"]:
                cell += f" (fail {c['gecko:fail']} / {c['twisted:fail']})"
            if c["gecko:skip"]:
                cell += f" (skip {c['gecko:skip']})"
            cells.append(cell)
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    total = Counter[str]()
    for c in counts.values():
        total.update(c)
    table = "\n".join(lines)
    summary = (
        f"Twisted tests run: gecko {total['gecko:run']}, Twisted baseline {total['twisted:run']} "
        f"(skipped: {total['gecko:skip']} / {total['twisted:skip']}; "
        f"failed: {total['gecko:fail']} / {total['twisted:fail']}; "
        f"known deviations: {len(deviations)}; gecko-only failures: {len(geckoOnly)}) in {elapsed:.0f}s"
    )
    print("Cells: tests run against gecko / against Twisted's own endpoint\n")
    print(table)
    print()
    print(summary)
    for testId in shared:
        print("  fails for both:", testId)
    for testId in deviations:
        print("  known deviation:", testId)
    for testId in geckoOnly:
        print("  GECKO-ONLY FAILURE:", testId)
        if args.v:
            full = "tests.conformance.twistedsuite." + testId
            print(result.details.get(full, ""))
    for testId in unhooked:
        print("  NEVER REACHED A GECKO LISTENER (exclude it by name):", testId)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n\n" + summary + "\n")
    return 1 if geckoOnly or unhooked or not outcomes else 0


if __name__ == "__main__":
    sys.exit(main())
