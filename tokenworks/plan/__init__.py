"""`tokenworks plan`: what a fleet would cost and how fast it would answer, before it is bought.

A step-latency model (measured on this machine, or from datasheets for GPUs) prices each engine
step; a discrete-event simulator runs the engine's own scheduler and KV cache manager, and the
router's own policies, on a simulated clock with those step times.
"""
