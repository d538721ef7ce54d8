"""Node runtime: the asyncio driver of the Raft core, the peer transport, the embedded Engine."""
