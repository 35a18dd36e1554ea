"""Mutation check for ``tests/test_jobstate.py``: each known bug must fail it.

Each mutant is one textual change to a temporary copy of
``trio_lkagent/_jobstate.py``; the copy is imported as a separate module and
the property test (:func:`tests.test_jobstate.lifecycle_for`) is run against
it with a fixed seed. A mutant the test does not catch is a hole in the test.

Run it::

    python -m tests.mutate_jobstate

(``tests/test_jobstate.py::test_each_mutant_is_caught`` runs the same check in
the test suite; it takes a few seconds.)
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import tempfile
import time
import types

import attrs
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

SOURCE = pathlib.Path(__file__).resolve().parent.parent / "trio_lkagent" / "_jobstate.py"


@attrs.frozen
class Mutant:
    name: str
    old: str
    new: str


MUTANTS = [
    Mutant(
        "resync drops queued final statuses",
        "                self._outbox.append(update)\n",
        "                pass\n",
    ),
    Mutant(
        "connection_lost also drops running jobs",
        "        gone = [j for j, s in self._slots.items() if s.phase is not Phase.RUNNING]\n"
        "        for job_id in gone:\n"
        "            del self._slots[job_id]\n"
        "        self._deadlines.clear()\n",
        "        gone = list(self._slots)\n"
        "        for job_id in gone:\n"
        "            if self._slots.pop(job_id).phase is Phase.RUNNING:\n"
        "                self._n_running -= 1\n"
        "        self._deadlines.clear()\n",
    ),
    Mutant(
        "request re-admits an already-ended job id",
        "        if job_id in self._slots or job_id in self._ended:\n",
        "        if job_id in self._slots:\n",
    ),
    Mutant(
        "over-admission (one slot too many)",
        "len(self._slots) >= self.max_jobs",
        "len(self._slots) > self.max_jobs",
    ),
]

#: Enough examples to find each mutant with the fixed seed; quick.
CHECK_SETTINGS = settings(
    max_examples=100,
    stateful_step_count=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=False,
    phases=[Phase.generate],  # a failure is all we need: no shrinking
)


def load_mutant(mutant: Mutant, directory: pathlib.Path) -> types.ModuleType:
    """A copy of ``_jobstate`` with *mutant* applied, imported under its own name."""
    text = SOURCE.read_text()
    if mutant.old and text.count(mutant.old) != 1:
        raise RuntimeError(f"mutant {mutant.name!r} does not apply: the code changed")
    path = directory / "_jobstate_mutant.py"
    path.write_text(text.replace(mutant.old, mutant.new) if mutant.old else text)
    name = f"_jobstate_mutant_{abs(hash(mutant.name))}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # attrs and dataclass-like machinery look it up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def failure(mutant: Mutant | None) -> str | None:
    """How the property test fails against *mutant* (None: it passes).

    ``None`` as the mutant runs the unmodified module: the control, which must pass.
    """
    from tests.test_jobstate import lifecycle_for

    with tempfile.TemporaryDirectory() as tmp:
        module = load_mutant(mutant or Mutant("none", "", ""), pathlib.Path(tmp))
        machine = lifecycle_for(module)
        try:
            run_state_machine_as_test(machine, settings=CHECK_SETTINGS)
        except AssertionError as exc:
            return f"AssertionError: {str(exc).splitlines()[0] if str(exc) else ''}"
        return None


def caught(mutant: Mutant) -> bool:
    """True if the property test fails against *mutant* with an assertion."""
    return failure(mutant) is not None


def main() -> int:
    control = failure(None)
    print(f"{'passes' if control is None else 'FAILS'}  unmodified _jobstate.py {control or ''}")
    failures = control is not None
    for mutant in MUTANTS:
        start = time.perf_counter()
        how = failure(mutant)
        took = time.perf_counter() - start
        verdict = "caught" if how else "NOT CAUGHT"
        print(f"{verdict}  {took:4.1f} s  {mutant.name}: {how or ''}")
        failures |= how is None
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
