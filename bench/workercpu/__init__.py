"""CPU per record of the edge worker's hot path (and the fleet's per request), in process, no broker."""
