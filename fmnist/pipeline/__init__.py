"""The pipeline: the DAG in ``jobs/pipeline.toml``, run here or submitted to a scheduler.

``spec`` reads the DAG and expands it into tasks; ``executor`` runs tasks on this
machine (``fmnist-batch run`` and, inside every scheduler job, ``fmnist-batch step``);
``submit`` turns tasks into scheduler jobs through the flavors of ``scheduler``, on the
``nodetypes`` of the catalog, warned by ``nodes`` of types no node offers; ``status``
tells what became of them. ``jobenv`` is the job a process runs in; ``attempts`` judges
how a job ended and whether another attempt is due, which ``handover`` submits from
inside the job itself; every attempt leaves a row in the trace (:mod:`fmnist.trace`).
"""
