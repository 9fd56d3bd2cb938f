"""Fuzzing in CI: replay every kept crash and seed, a few seconds of coverage-guided atheris per target, and
property tests (hypothesis) over crops, k, scores and admission. The longer run is documented in fuzz/run.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fuzz.targets import TARGETS, image_path
from server.core.config import REPO_ROOT, Settings
from server.core.errors import InvalidInput
from server.embedding import imaging
from server.query.duplicates import collapse_duplicates
from server.query.search import Query, Searcher
from server.runtime.admission import Admission, Shed
from server.runtime.callers import Principal
from server.store.base import Candidate

FUZZ = REPO_ROOT / "fuzz"
CASES = sorted((target, path) for target in TARGETS for folder in ("regressions", "seeds", "corpus")
               for path in (FUZZ / folder / target).glob("*") if path.is_file())


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{t}/{p.parent.parent.name}/{p.name}" for t, p in CASES])
def test_kept_inputs_replay_without_crash(target, path):
    TARGETS[target](path.read_bytes())  # returns, or raises InvalidInput inside (caught): nothing else


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_atheris_finds_nothing_in_a_short_run(target, tmp_path):
    """A few seconds of coverage-guided fuzzing from the kept corpus; libFuzzer exits non-zero on a finding."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "fuzz.run", target, "-max_total_time=4", "-timeout=10", "-rss_limit_mb=2500",
         f"-artifact_prefix={tmp_path}/", str(corpus), str(FUZZ / "corpus" / target), str(FUZZ / "seeds" / target)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    findings = sorted(p.name for p in tmp_path.glob("crash-*")) + sorted(p.name for p in tmp_path.glob("timeout-*"))
    assert done.returncode == 0 and not findings, (findings, done.stderr[-3000:])
    assert "DONE" in done.stderr, done.stderr[-2000:]


unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True), st.floats(allow_nan=True),
                 st.floats(allow_nan=True)), st.integers(1, 300), st.integers(1, 300))
def test_any_crop_gives_a_model_input_or_a_named_error(box, width, height):
    image = Image.new("RGB", (width, height), (10, 200, 30))
    crop = imaging.CropBox(*box)
    try:
        cropped = imaging.crop_normalized(image, crop)
    except InvalidInput as exc:
        assert exc.field == "crop"
        return
    assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
    assert 1 <= cropped.size[0] <= width and 1 <= cropped.size[1] <= height
    pixels = imaging.to_model_input(cropped)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8


@settings(max_examples=300, deadline=None)
@given(st.integers(-5, 5000))
def test_k_is_accepted_exactly_in_range(k):
    searcher = Searcher.__new__(Searcher)
    searcher.settings = Settings()
    query = Query(image_id="a/b", k=k)
    if k == 0 or 1 <= k <= 1000:
        assert searcher._validate(query) == (k or 20)
    else:
        with pytest.raises(InvalidInput, match="k:"):
            searcher._validate(query)


@st.composite
def ranked(draw):
    n = draw(st.integers(0, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    vectors = rng.standard_normal((n, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12
    scores = sorted((float(s) for s in rng.uniform(-1, 1, n)), reverse=True)
    hashes = [f"h{draw(st.integers(0, 10))}" for _ in range(n)]
    return [Candidate(f"i{j}", scores[j], hashes[j], vectors[j]) for j in range(n)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ranked(), st.integers(1, 50), st.floats(0.5, 1.0))
def test_duplicate_collapse_keeps_order_k_and_no_duplicates(candidates, k, threshold):
    kept, removed = collapse_duplicates(candidates, k, threshold)
    assert len(kept) <= k and len({c.image_id for c in kept}) == len(kept)
    assert [c.score for c in kept] == sorted((c.score for c in kept), reverse=True)
    assert len({c.content_hash for c in kept}) == len(kept)
    for a in range(len(kept)):
        for b in range(a + 1, len(kept)):
            assert float(kept[a].vector @ kept[b].vector) <= threshold
    walked = next((n + 1 for n, c in enumerate(candidates) if c is kept[-1]), 0) if len(kept) == k else \
        len(candidates)
    assert removed + len(kept) == walked  # every candidate looked at is kept or counted as removed
    assert kept == [c for c in candidates if c in kept]  # a subsequence of the ranking


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 150), st.integers(1, 3), st.sampled_from([None, 0.0, 0.001, 5.0]),
                          st.sampled_from(["alice", "bob", "mallory"])), min_size=1, max_size=25))
def test_admission_never_exceeds_its_limits_and_always_drains(requests):
    async def scenario() -> None:
        admission = Admission("prop", max_in_flight=3, max_pixels=100, latency_budget_s=None)
        peak = {"units": 0, "pixels": 0}

        async def one(pixels: int, units: int, timeout_s: float | None, principal: str) -> None:
            cost = pixels * 1_000_000 // 100
            try:
                async with admission.admit(cost, timeout_s, units=units, caller=Principal(principal)):
                    peak["units"] = max(peak["units"], admission.in_flight)
                    peak["pixels"] = max(peak["pixels"], admission.pixels)
                    await asyncio.sleep(0)
            except Shed:
                pass
        admission.max_pixels = 1_000_000
        await asyncio.gather(*(one(*r) for r in requests))
        assert peak["units"] <= 3 and peak["pixels"] <= 1_000_000
        assert admission.in_flight == 0 and admission.pixels == 0 and admission.waiting == 0
    asyncio.run(scenario())


def test_fuzz_target_rejects_what_the_issue_found(tmp_path):
    """The image-path regressions must fail with a named field, never with an object address or a crash."""
    for path in sorted((FUZZ / "regressions" / "image_path").glob("*")):
        data = path.read_bytes()[16:]
        try:
            imaging.prepare(data, None, imaging.Limits(max_pixels=4_000_000))
        except InvalidInput as exc:
            assert exc.field == "image_bytes" and "0x" not in exc.message, (path.name, exc.message)
    image_path(b"")  # too short for a crop header: ignored, not an error


def test_regressions_folder_is_replayed():
    assert any(t == "image_path" and p.parent.parent.name == "regressions" for t, p in CASES)
    assert Path(FUZZ / "run.py").exists()
