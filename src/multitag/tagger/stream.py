"""One batch of a streamed ``tag`` job: :class:`BatchTagger` turns inputs into the rows of a
tag dataset (:mod:`multitag.tagger.shards`). Both engines of :mod:`multitag.tagger.stream_job`
run it (the local one in its process, Ray's in actors), so their outputs are the same rows.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa

from multitag.core.digest import file_digest
from multitag.tagger import shards
from multitag.vision.engines import set_threads


class BatchTagger:
    """Callable: a batch of inputs (``id``, ``path``) -> its output rows (a ``pyarrow.Table``
    in :func:`~multitag.tagger.shards.tag_schema`), without the rows whose ``(id, digest)``
    is in ``done``. The model is loaded once, when constructed (once per Ray actor).

    A photo that cannot be read or decoded becomes a row with ``error`` set, never an
    exception: one bad photo loses no other work.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        top_k: int = 3,
        batch_size: int = 64,
        done: frozenset | set = frozenset(),
        threads: int | None = None,
        torch_threads: int | None = None,
    ) -> None:
        from multitag.tagger.loading import load_any_tagger

        set_threads(threads, torch_threads)
        self.tagger = load_any_tagger(model_dir)
        self.tagger.set_params(runtime__progress=False)  # the job shows one bar over every batch
        if hasattr(self.tagger, "release_engines"):
            self.tagger.release_engines = True
        self.model = shards.model_fingerprint(model_dir)
        self.top_k, self.batch_size, self.done = top_k, batch_size, done
        self.schema = shards.model_schema(model_dir)

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        from multitag.tagger.batch import tag_frame

        ids = batch["id"].astype(str).tolist()
        paths = batch["path"].astype(str).tolist()
        digests, errors = [], {}
        for i, p in enumerate(paths):
            try:
                digests.append(file_digest(p))
            except OSError as err:
                digests.append("")
                errors[i] = f"cannot read file ({err.strerror or type(err).__name__})"
        todo = [i for i in range(len(ids)) if (ids[i], digests[i]) not in self.done]
        readable = [i for i in todo if i not in errors]
        # positions as ids: tag_frame's rows and rejects map back to input order
        out = pd.DataFrame(index=pd.Index(todo, dtype=np.int64))
        if readable:
            frame = pd.DataFrame({"id": readable, "path": [paths[i] for i in readable]})
            tags, rejects = tag_frame(
                self.tagger, frame, top_k=self.top_k, batch_size=self.batch_size
            )
            errors.update(zip(rejects["id"].tolist(), rejects["reason"].tolist()))
            out = out.join(tags.set_index("id").drop(columns="path"), how="left")
        out.insert(0, "id", [ids[i] for i in todo])
        out.insert(1, "path", [paths[i] for i in todo])
        out.insert(2, "digest", [digests[i] for i in todo])
        out.insert(3, "model", self.model)
        out.insert(4, "error", [errors.get(i) for i in todo])
        return shards.to_table(out, self.schema)  # no readable photo: no tag columns
