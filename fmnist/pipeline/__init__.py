"""The pipeline: the DAG in ``jobs/pipeline.toml``, run here or submitted to a scheduler.

``spec`` reads the DAG and expands it into tasks; ``executor`` runs tasks on this
machine (``fmnist-batch run`` and, inside every scheduler job, ``fmnist-batch step``);
``submit`` turns tasks into scheduler jobs through the flavors of ``scheduler``, warned
by ``nodes`` of node types no node offers; ``status`` tells what became of them.
"""
