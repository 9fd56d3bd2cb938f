"""Run a fuzz target under atheris (coverage-guided, libFuzzer flags pass through).

    python -m fuzz.run image_path -max_total_time=600 fuzz/corpus/image_path fuzz/seeds/image_path
    python -m fuzz.run search_request -runs=100000 fuzz/corpus/search_request

A crash writes `crash-<sha1>` in the working directory (or -artifact_prefix=...): copy it into
fuzz/regressions/<target>/ so tests/unit/test_input_fuzzing.py replays it forever, then fix the code.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["server", "protos", "PIL"]):  # Pillow's Python parsers too
    from fuzz.targets import TARGETS


def main() -> None:
    name = sys.argv[1]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
