"""Coverage-guided fuzzing (atheris) of what a hostile client controls: image bytes, crops and request messages."""
