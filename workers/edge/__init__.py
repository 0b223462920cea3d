"""The edge worker: one asyncio process per region that answers devices, exactly once."""
