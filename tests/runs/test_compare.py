"""``lrag demo compare``: ground truth | native | retrieval, decoded back with PyAV and PIL."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from lrag.cli import main
from lrag.runs.compare import (FOOTER, HEADER, CompareError, build_codec, compose_frame, load_compare,
                               run_model_args, truth_latents)

DEMO = str(Path(__file__).resolve().parents[2] / "configs" / "predict" / "demo.yaml")
FRAMES = 24  # 8 blocks: the memory fills and retrieves in the later ones


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    """A retrieval run and a native run of world 1000, in ``<tmp>/runs``."""
    root = tmp_path_factory.mktemp("compare")
    for name, extra in (("rag", []), ("native", ["--model.init_args.memory.init_args.memory_size=0"])):
        main(["predict", "--config", DEMO, f"--model.init_args.num_frames={FRAMES}",
              f"--model.init_args.run_name={name}", "--model.init_args.progress=false",
              f"--model.init_args.out_dir={root / 'runs'}",
              f"--model.init_args.store_uri={root / 'runs' / 'memory.lancedb'}",
              f"--trainer.logger.init_args.save_dir={root / 'tb'}", "--trainer.callbacks=[]", *extra])
    return root / "runs"


def _decode_mp4(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.slow
def test_compare_video_has_three_panels_per_frame(two_runs: Path, capsys) -> None:
    db = str(two_runs / "memory.lancedb")
    main(["demo", "compare", "rag-0", "native-0", "--runs", str(two_runs), "--db", db])
    out = two_runs / "rag-0"
    assert "compare.mp4" in capsys.readouterr().out

    video = _decode_mp4(out / "compare.mp4")
    panel = 256  # the demo decodes 64 px frames: x4 nearest-neighbour
    assert video.shape == (FRAMES, HEADER + panel + FOOTER, 3 * panel, 3)

    data = load_compare(out, two_runs / "native-0", db)
    assert data.truth.shape == data.native.shape == data.rag.shape == (FRAMES, 64, 64, 3)
    # The left panel is the world itself, through the run's codec, nearest-neighbour upscaled.
    codec = build_codec(run_model_args(out))
    truth = json.loads((out / "world.json").read_text())
    gt = codec.decode(torch.from_numpy(truth_latents(truth))[None])[0].numpy()
    assert np.array_equal(gt, data.truth)
    t = next(i for i in range(FRAMES) if not data.revisits[i])  # no border drawn on this frame
    frame = compose_frame(data, t)
    for i, arm in enumerate((data.truth, data.native, data.rag)):
        region = frame[HEADER:HEADER + panel, i * panel:(i + 1) * panel]
        assert np.array_equal(region, arm[t].repeat(4, 0).repeat(4, 1)), f"panel {i}"
    # The mp4 is that frame after H.264 (lossy): close, not equal.
    assert np.abs(video[t].astype(int) - frame.astype(int)).mean() < 8
    assert not np.array_equal(data.native, data.rag)  # the arms differ once retrieval kicks in

    # Retrieved frames of the current block are drawn as thumbnails under the retrieval panel.
    block = max(data.retrievals)
    t = block * data.frames_per_block
    hit = data.retrievals[block][0][0]
    frame = compose_frame(data, t)
    thumb = frame[HEADER + panel + 6:HEADER + panel + 6 + 64, 2 * panel + 70:2 * panel + 134]
    assert np.array_equal(thumb, data.rag[hit])

    gif = Image.open(out / "compare.gif")
    assert gif.n_frames == FRAMES and gif.size == (3 * panel // 2, (HEADER + panel + FOOTER) // 2)
    assert (out / "compare.png").stat().st_size < 300_000


@pytest.mark.slow
def test_compare_refuses_runs_of_other_worlds(two_runs: Path, tmp_path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for name in ("config.yaml", "world.json"):
        (other / name).write_bytes((two_runs / "native-0" / name).read_bytes())
    truth = json.loads((other / "world.json").read_text())
    truth["world"]["world_id"] = 7
    (other / "world.json").write_text(json.dumps(truth))
    with pytest.raises(CompareError, match="different worlds"):
        load_compare(two_runs / "rag-0", other, str(two_runs / "memory.lancedb"))


def test_compare_names_a_missing_run_folder(tmp_path) -> None:
    with pytest.raises(SystemExit, match="no run folder"):
        main(["demo", "compare", "nope-0", "native-0", "--runs", str(tmp_path)])
