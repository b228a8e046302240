"""Batch scoring: CSV or Parquet inputs to Parquet predictions in resumable shards, and verify.

``inputs`` is the one interface over the readers (``csv_input`` with ``csv_parse``, and
``parquet_input``), which share ``rows``: parsed blocks, rejects and the value rule.
``shards`` owns the files of one shard (and its success marker and reject limit),
``score`` writes them, with ``overlap`` keeping the reader and the engine busy at once;
``verify`` proves every input row is accounted for.
"""
