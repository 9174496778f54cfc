"""Store rows of a block: the descriptor tag names the embedding space of the vectors."""

import numpy as np
import torch

from lrag.data.shards import ShardLocation
from lrag.memory.bank import RetrievalMemory
from lrag.runs.rows import descriptor_tag, frame_rows
from lrag.sampling.sampler import BlockResult


def _rows(memory: RetrievalMemory) -> list:
    result = BlockResult(block=2, start_frame=6, latents=torch.zeros(1, 3, 16, 4, 4),
                         descriptors=torch.arange(12.0).reshape(1, 3, 4), retrieval=None, seconds=0.1)
    frames = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    hashes = {"backbone_weights": "b" * 64, "embedder": "e" * 64}
    return frame_rows("run", result, ShardLocation("s.tar", "k"), frames, descriptor_tag(memory, hashes))


def test_generator_key_rows_are_tagged_with_backbone_layers_and_query() -> None:
    rows = _rows(RetrievalMemory(2, 1, "gen_keys", key_layers=[0, -1], key_query="queries"))
    assert [r.frame_index for r in rows] == [6, 7, 8]
    assert rows[0].descriptor == "gen_keys:" + "b" * 12 + ":0,-1:queries"
    assert rows[2].embedding.tolist() == [8.0, 9.0, 10.0, 11.0]
    assert _rows(RetrievalMemory(2, 1, "avg_pool"))[0].descriptor == "avg_pool"
