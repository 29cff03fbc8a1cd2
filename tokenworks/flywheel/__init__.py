"""The flywheel: served traffic becomes a better model, never a worse one. ARCHITECTURE.md lists its modules."""
