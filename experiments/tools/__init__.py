"""Command-line tools built on the harness: the demo (``python -m experiments demo``) and the
dead-unit diagnosis of a checkpoint (``python -m experiments diagnose``).
"""
