"""The parse/validate property tests at scale: a fixed-seed run of many cases, not the suite's 200.

    python benchmarks/fuzz_parse.py                     # 100,000 cases over 10 properties (~7 min on 2 cores)
    python benchmarks/fuzz_parse.py --cases 5000        # quick

Runs every property of tests/events/test_validate_fuzz.py (random bytes, truncated and mutated JSON,
wrong types, arbitrary JSON documents, decoded Avro records, unknown fields, empty labels, BOMs, whole
chunks, corrupted Avro files: no crash, every line in exactly one output or the file refused by name) with `derandomize=True`, so a run is repeatable and
its failures reproduce. The strategies live with the tests, once. Prints cases and seconds per property;
exits 1 on the first falsified property, with Hypothesis's minimal example.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "events")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000,
                        help="examples in all, shared evenly by the properties (default: 100000)")
    args = parser.parse_args(argv)
    properties_count = 10  # checked below, once the module is imported
    per_property = -(-args.cases // properties_count)
    # The properties read their case count when imported (tests/events/test_validate_fuzz.py, FUZZ).
    os.environ["LABELBEAM_FUZZ_CASES"] = str(per_property)
    import test_validate_fuzz as properties  # the strategies and properties, kept with the tests
    found = sorted(name for name in dir(properties) if name.startswith("test_")
                   and hasattr(getattr(properties, name), "hypothesis"))
    if len(found) != properties_count:
        print(f"expected {properties_count} properties, found {len(found)}: update properties_count")
        return 1
    print(f"{len(found)} properties x {per_property:,} cases (derandomized)")
    total_started = time.perf_counter()
    for name in found:
        started = time.perf_counter()
        try:
            getattr(properties, name)()
        except Exception as failure:  # noqa: BLE001 - a falsified property: report it and stop
            print(f"FALSIFIED {name}: {failure!r}")
            return 1
        seconds = time.perf_counter() - started
        print(f"  ok  {name:<70} {seconds:8.1f} s  {per_property / seconds:9,.0f} cases/s", flush=True)
    print(f"all {len(found)} properties held over {len(found) * per_property:,} cases in "
          f"{time.perf_counter() - total_started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
