"""Scale-out on NATS JetStream: cameras pinned to GPU workers, with failover."""
