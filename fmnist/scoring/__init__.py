"""Batch scoring: large CSV inputs to Parquet predictions in resumable shards, and verify.

``csv_input`` streams and checks the input, ``shards`` owns the files of one shard (and
its success marker), ``score`` writes them, ``verify`` proves every input row is
accounted for.
"""
