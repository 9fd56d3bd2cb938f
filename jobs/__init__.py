"""Batch jobs that run beside serving, on a Ray cluster (or Ray on one machine)."""
