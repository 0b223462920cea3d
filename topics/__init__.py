"""Topic catalogue, region routing and admin: the only place that spells a topic name."""
