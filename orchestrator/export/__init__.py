"""After a sweep: adapters read from any storage location, merged and exported models."""
