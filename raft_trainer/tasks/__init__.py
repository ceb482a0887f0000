"""Tasks to run RAFT on offline: verifiable arithmetic (arithmetic.py) and the miniature HH-RLHF world (toy/)."""
