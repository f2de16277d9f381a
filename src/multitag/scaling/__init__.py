"""Batch jobs beyond one process: streamed, resumable Parquet output (:mod:`.shards`), the
callable that tags one batch (:mod:`.tag_job`) and the Ray Data engine (:mod:`.ray_engine`)."""
