"""Stage 4: activations at the Safety-Token span, across depths × layers, into HDF5.

``masks`` is the one builder of injected inputs (packed tree masks, span over a KV cache, piggyback, left
padding); ``packed`` runs one forward per response for every depth; ``store`` is the HDF5 layout; ``shards``
and ``distributed`` split a run over processes and merge it.
"""
